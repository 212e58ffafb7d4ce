//! A small log-bucketed histogram in the spirit of HdrHistogram.
//!
//! Values (nanoseconds here) below 128 get a bucket each; above that every power of two
//! is split into 64 linear sub-buckets, so a recorded value is known to within 1/64
//! (1.6 %) while the whole u64 range fits in 3,776 counters (30 KiB). Recording is a
//! leading-zeros count and an increment, cheap enough for every delivered message.
//! Min, max and sum are tracked exactly.

/// Values below this get a bucket of their own.
const LINEAR_LIMIT: u64 = 128;
/// Sub-buckets per power of two above [`LINEAR_LIMIT`] (2^6: 1.6 % resolution).
const SUB_BITS: u32 = 6;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Powers of two 2^7 ..= 2^63 each get SUB_BUCKETS buckets.
const BUCKETS: usize = LINEAR_LIMIT as usize + (64 - 7) * SUB_BUCKETS;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("total", &self.total).field("min", &self.min).field("max", &self.max).finish()
    }
}

fn index_of(value: u64) -> usize {
    if value < LINEAR_LIMIT {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= 7
    let shift = exp - SUB_BITS;
    // The top SUB_BITS+1 bits of the value: in [64, 128).
    let mantissa = (value >> shift) as usize;
    LINEAR_LIMIT as usize + (exp as usize - 7) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)
}

/// The largest value that lands in bucket `index` (what HdrHistogram calls the highest
/// equivalent value), so percentiles never under-report.
fn highest_in(index: usize) -> u64 {
    if index < LINEAR_LIMIT as usize {
        return index as u64;
    }
    let k = index - LINEAR_LIMIT as usize;
    let exp = (k / SUB_BUCKETS) as u32 + 7;
    let mantissa = (k % SUB_BUCKETS + SUB_BUCKETS) as u64;
    let shift = exp - SUB_BITS;
    let low = mantissa << shift;
    low.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    pub fn new() -> Self {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0, min: u64::MAX, max: 0, sum: 0 }
    }

    #[inline]
    pub fn record(&mut self, value: u64) {
        self.counts[index_of(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The value at percentile `p` (0..=100): the smallest recorded bucket such that at
    /// least p % of the samples are at or below it, reported as that bucket's highest
    /// value but never above the exact maximum.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let p = p.clamp(0.0, 100.0);
        let target = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(highest_in(i).min(self.max).max(self.min));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        assert_eq!(index_of(0), 0);
        assert_eq!(index_of(127), 127);
        assert_eq!(index_of(128), 128);
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
        assert_eq!(highest_in(BUCKETS - 1), u64::MAX);
        let mut last = 0;
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            let i = index_of(v);
            assert!(i >= last);
            assert!(highest_in(i) >= v, "value {v} above its bucket's top {}", highest_in(i));
            // Bucket width is at most 1/64 of the values in it.
            assert!(highest_in(i) - v <= v / 64, "value {v}: bucket top {}", highest_in(i));
            last = i;
            v = v * 3 / 2 + 1;
        }
        // Each bucket's top is the value just before the next bucket's first value.
        for i in 0..BUCKETS - 1 {
            assert_eq!(index_of(highest_in(i)), i);
            assert_eq!(index_of(highest_in(i) + 1), i + 1);
        }
    }

    #[test]
    fn percentiles_of_uniform_values() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.min(), Some(1));
        assert_eq!(h.max(), Some(100_000));
        assert!((h.mean().unwrap() - 50_000.5).abs() < 1e-6);
        for (p, exact) in [(50.0, 50_000.0), (95.0, 95_000.0), (99.0, 99_000.0), (99.9, 99_900.0)] {
            let got = h.percentile(p).unwrap() as f64;
            assert!(got >= exact && got <= exact * (1.0 + 1.0 / 64.0), "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.percentile(100.0), Some(100_000));
        assert_eq!(h.percentile(0.0), Some(1));
    }

    #[test]
    fn small_values_are_exact_and_empty_is_none() {
        let mut h = Histogram::new();
        assert!(h.is_empty());
        assert_eq!(h.percentile(50.0), None);
        assert_eq!(h.mean(), None);
        for v in [3, 3, 3, 7] {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), Some(3));
        assert_eq!(h.percentile(75.0), Some(3));
        assert_eq!(h.percentile(76.0), Some(7));
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(1_000);
        b.record(5_000_000);
        b.record(10);
        a.merge(&b);
        a.merge(&Histogram::new());
        assert_eq!(a.count(), 3);
        assert_eq!(a.min(), Some(10));
        assert_eq!(a.max(), Some(5_000_000));
        assert_eq!(a.percentile(100.0), Some(5_000_000));
        let p50 = a.percentile(50.0).unwrap();
        assert!((1_000..=1_016).contains(&p50), "{p50}");
    }
}
