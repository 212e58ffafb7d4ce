//! RabbitMQ's rules for list endpoints (operate.md §1.3): `name` / `use_regex` filter on the
//! name, `sort` on a dotted path with `sort_reverse`, `page` / `page_size` (≤ 500) with the
//! paged reply, and `columns` keeping only the named dotted paths.
//!
//! Lists stay fast at 10,000+ objects because filtering, sorting and paging happen on the
//! objects themselves whenever the sort key is one the caller can compare without JSON
//! (names, counts): only the page's items are turned into JSON. Sorting on any other path
//! builds every item's JSON once and sorts those.

use std::cmp::Ordering;
use std::collections::HashMap;

use regex::Regex;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

/// RabbitMQ's largest page.
pub(crate) const PAGE_SIZE_MAX: usize = 500;
/// RabbitMQ's page size when `page` is given without `page_size`.
const PAGE_SIZE_DEFAULT: usize = 100;
/// Longest `name` regex accepted, in bytes (a compiled regex's size follows its length).
const NAME_REGEX_MAX_BYTES: usize = 1024;

enum NameFilter {
    /// Case-insensitive substring, lowercased.
    Substring(String),
    Regex(Regex),
}

/// A list request's query parameters.
pub(crate) struct ListQuery {
    page: Option<usize>,
    page_size: usize,
    name: Option<NameFilter>,
    /// None: the list's default order; Some(empty): unsorted (kbudde sends `sort=`).
    sort: Option<String>,
    sort_reverse: bool,
    /// Dotted paths, split.
    columns: Option<Vec<Vec<String>>>,
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true")
}

fn positive(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<usize>> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!("{key} must be a positive integer, got '{v}'"))),
        },
    }
}

impl ListQuery {
    pub(crate) fn parse(q: &HashMap<String, String>) -> ApiResult<ListQuery> {
        let page = positive(q, "page")?;
        let page_size = positive(q, "page_size")?.unwrap_or(PAGE_SIZE_DEFAULT);
        if page_size > PAGE_SIZE_MAX {
            return Err(ApiError::bad_request(format!("page_size must be between 1 and {PAGE_SIZE_MAX}")));
        }
        let name = match q.get("name").filter(|n| !n.is_empty()) {
            None => None,
            Some(n) if flag(q, "use_regex") => {
                if n.len() > NAME_REGEX_MAX_BYTES {
                    return Err(ApiError::bad_request(format!("name regex longer than {NAME_REGEX_MAX_BYTES} bytes")));
                }
                let re = Regex::new(n).map_err(|e| ApiError::bad_request(format!("invalid name regex: {e}")))?;
                Some(NameFilter::Regex(re))
            }
            Some(n) => Some(NameFilter::Substring(n.to_lowercase())),
        };
        let columns = q
            .get("columns")
            .filter(|c| !c.is_empty())
            .map(|c| c.split(',').map(|p| p.split('.').map(str::to_owned).collect()).collect());
        Ok(ListQuery {
            page,
            page_size,
            name,
            sort: q.get("sort").cloned(),
            sort_reverse: flag(q, "sort_reverse"),
            columns,
        })
    }

    fn matches(&self, name: &str) -> bool {
        match &self.name {
            None => true,
            Some(NameFilter::Regex(re)) => re.is_match(name),
            Some(NameFilter::Substring(s)) => {
                // Most names are ASCII: compare without allocating a lowercased copy.
                if name.is_ascii() && s.is_ascii() {
                    name.as_bytes().windows(s.len().max(1)).any(|w| w.eq_ignore_ascii_case(s.as_bytes()))
                        || s.is_empty()
                } else {
                    name.to_lowercase().contains(s.as_str())
                }
            }
        }
    }
}

/// A comparison of two items without their JSON.
pub(crate) type Compare<T> = fn(&T, &T) -> Ordering;

/// How a list's items are named, ordered and shown.
pub(crate) struct Shape<T, C, J> {
    /// The name `name=` filters on.
    pub name: fn(&T) -> &str,
    /// A comparison for a `sort` key, when one exists without JSON.
    pub cheap_sort: C,
    /// The order without `sort`.
    pub default_order: Compare<T>,
    pub to_json: J,
}

/// Answer a list request over `items`.
pub(crate) fn respond<T, C, J>(q: &ListQuery, mut items: Vec<T>, shape: Shape<T, C, J>) -> ApiResult<Value>
where
    C: Fn(&str) -> Option<Compare<T>>,
    J: Fn(&T) -> Value,
{
    let total = items.len();
    if q.name.is_some() {
        items.retain(|t| q.matches((shape.name)(t)));
    }
    let filtered = items.len();
    let (offset, take) = page_window(q, filtered)?;
    let cheap = match q.sort.as_deref() {
        None => Some(Some(shape.default_order)),
        Some("") => Some(None),
        Some(k) => (shape.cheap_sort)(k).map(Some),
    };
    // As RabbitMQ: the `sort` key first, the list's default order among equals (so an
    // unknown key, equal everywhere, gives the default order), and `sort_reverse`
    // reverses the whole result.
    let default = shape.default_order;
    let mut page: Vec<Value> = match cheap {
        Some(order) => {
            if let Some(cmp) = order {
                items.sort_by(|a, b| cmp(a, b).then_with(|| default(a, b)));
                if q.sort_reverse {
                    items.reverse();
                }
            }
            items.iter().skip(offset).take(take).map(&shape.to_json).collect()
        }
        None => {
            let path: Vec<&str> = q.sort.as_deref().unwrap_or_default().split('.').collect();
            let mut all: Vec<(Value, &T)> = items.iter().map(|t| ((shape.to_json)(t), t)).collect();
            all.sort_by(|(a, ta), (b, tb)| {
                compare_values(lookup(a, &path), lookup(b, &path)).then_with(|| default(ta, tb))
            });
            if q.sort_reverse {
                all.reverse();
            }
            all.into_iter().skip(offset).take(take).map(|(v, _)| v).collect()
        }
    };
    if let Some(cols) = &q.columns {
        for v in &mut page {
            *v = project(v, cols);
        }
    }
    let Some(p) = q.page else { return Ok(Value::Array(page)) };
    Ok(json!({
        "filtered_count": filtered,
        "item_count": page.len(),
        "items": page,
        "page": p,
        "page_count": page_count(filtered, q.page_size),
        "page_size": q.page_size,
        "total_count": total,
    }))
}

fn page_count(filtered: usize, page_size: usize) -> usize {
    filtered.div_ceil(page_size)
}

/// (skip, take) for the requested page; everything without `page`.
fn page_window(q: &ListQuery, filtered: usize) -> ApiResult<(usize, usize)> {
    let Some(p) = q.page else { return Ok((0, usize::MAX)) };
    let pages = page_count(filtered, q.page_size);
    if p > pages && pages > 0 {
        return Err(ApiError::bad_request("page out of range"));
    }
    Ok(((p - 1) * q.page_size, q.page_size))
}

/// The value at a dotted path; missing is None.
fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// RabbitMQ's order: missing and null count as 0, numbers before strings (and booleans,
/// lists, objects after those, as Erlang orders terms).
fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null | Value::Number(_) => 0,
            Value::Bool(_) => 1,
            Value::String(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
        }
    }
    let zero = Value::from(0);
    let a = a.filter(|v| !v.is_null()).unwrap_or(&zero);
    let b = b.filter(|v| !v.is_null()).unwrap_or(&zero);
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Only the fields at `cols` (dotted paths), nested as in the item.
fn project(v: &Value, cols: &[Vec<String>]) -> Value {
    let mut out = Map::new();
    for path in cols {
        let mut src = v;
        let mut dst = &mut out;
        for (i, k) in path.iter().enumerate() {
            let Some(next) = src.get(k) else { break };
            if i + 1 == path.len() {
                dst.insert(k.clone(), next.clone());
                break;
            }
            src = next;
            let slot = dst.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(m) => dst = m,
                _ => break,
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ListQuery::parse(&m).unwrap()
    }

    struct Item {
        name: String,
        n: u64,
    }

    fn items() -> Vec<Item> {
        (0..25u64).map(|i| Item { name: format!("Q{i:02}"), n: (i * 7) % 25 }).collect()
    }

    fn run(q: &ListQuery) -> Value {
        let shape = Shape {
            name: |i: &Item| i.name.as_str(),
            cheap_sort: |k: &str| -> Option<Compare<Item>> {
                (k == "name").then_some((|a: &Item, b: &Item| a.name.cmp(&b.name)) as Compare<Item>)
            },
            default_order: |a: &Item, b: &Item| a.name.cmp(&b.name),
            to_json: |i: &Item| json!({"name": i.name, "stats": {"n": i.n}, "other": 1}),
        };
        respond(q, items(), shape).unwrap()
    }

    #[test]
    fn pages_filters_sorts_and_projects() {
        let v = run(&query(&[("page", "1"), ("page_size", "10"), ("name", "q1")]));
        assert_eq!(v["total_count"], 25);
        assert_eq!(v["filtered_count"], 10);
        assert_eq!(v["page_count"], 1);
        let v = run(&query(&[("page", "3"), ("page_size", "10")]));
        assert_eq!((v["item_count"].as_u64(), v["page_count"].as_u64()), (Some(5), Some(3)));
        assert_eq!(v["items"][0]["name"], "Q20");
        let v = run(&query(&[("sort", "stats.n"), ("sort_reverse", "true"), ("columns", "name,stats.n")]));
        assert_eq!(v[0], json!({"name": "Q07", "stats": {"n": 24}}));
        let v = run(&query(&[("name", "^Q0[12]$"), ("use_regex", "true")]));
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn an_unknown_sort_key_keeps_the_default_order_as_rabbitmq() {
        let names = |v: &Value| {
            v.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        let all: Vec<String> = (0..25).map(|i| format!("Q{i:02}")).collect();
        assert_eq!(names(&run(&query(&[("sort", "no.such.key")]))), all);
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(names(&run(&query(&[("sort", "no_such_key"), ("sort_reverse", "true")]))), rev);
        // Equal keys fall back to the default order (reversed with the rest).
        let v = run(&query(&[("sort", "other"), ("page", "1"), ("page_size", "3")]));
        assert_eq!(names(&v["items"]), ["Q00", "Q01", "Q02"]);
    }

    #[test]
    fn refuses_oversized_pages_and_pages_past_the_end() {
        let m: HashMap<String, String> = [("page_size".to_owned(), "501".to_owned())].into();
        assert!(ListQuery::parse(&m).is_err());
        let shape = Shape {
            name: |i: &Item| i.name.as_str(),
            cheap_sort: |_: &str| None,
            default_order: |a: &Item, b: &Item| a.name.cmp(&b.name),
            to_json: |i: &Item| json!({"name": i.name}),
        };
        assert!(respond(&query(&[("page", "4"), ("page_size", "10")]), items(), shape).is_err());
    }

    #[test]
    fn missing_values_sort_as_zero_and_numbers_before_strings() {
        let (a, b, s) = (json!(-1), json!(3), json!("x"));
        assert_eq!(compare_values(None, Some(&a)), Ordering::Greater);
        assert_eq!(compare_values(None, Some(&b)), Ordering::Less);
        assert_eq!(compare_values(Some(&b), Some(&s)), Ordering::Less);
    }
}
