//! Inter-node authentication: the shared [`Cookie`] (Erlang's cookie) and the handshake every
//! inter-node TCP connection runs before any Raft or ping frame is accepted.
//!
//! The exchange follows Erlang's distribution handshake (initiator proves first, so the
//! acceptor never hands a proof to an unauthenticated dialer):
//!
//! ```text
//! initiator                                   acceptor
//!   Hello { from, to, nonce_i, offer_i } ──▶    refuses if `to` is not its name, or if the
//!                                               wire-protocol ranges do not overlap
//!                                      ◀──      Challenge { nonce_a, offer_a }
//!   Proof { mac_i }                    ──▶      checks mac_i
//!                                      ◀──      Welcome { mac_a }  |  Refused { reason }
//!   checks mac_a
//! ```
//!
//! `mac = HMAC-SHA256(cookie, DOMAIN | role | from | to | nonce_i | nonce_a | offer_i |
//! offer_a)`: both nonces are fresh per connection (no replay), the role byte keeps one side's
//! proof from being reflected as the other's, the names bind the proof to who claims to talk
//! to whom, and the offers (each side's [`Offer`]: the wire-protocol versions it speaks and
//! the feature flags it supports) cannot be altered on the way without the proof failing. The
//! cookie never crosses the wire.
//!
//! A node of a version before this negotiation sends no offer: it is refused (its MAC input
//! differs anyway), with a message saying so rather than "cookie mismatch". Frames are the transport's (length, crc32c, JSON); the traffic after
//! the handshake is authenticated by position only (not encrypted, not MACed per frame).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::transport::{ReadError, read_frame_detailed, write_frame};

/// How long the whole handshake may take, on either side. A dialer that connects and stays
/// silent holds a task and a socket for at most this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Random bytes each side contributes per connection.
pub(crate) const NONCE_BYTES: usize = 32;
/// Largest handshake frame (the hello carries two node names; the rest is smaller). A peer
/// not yet authenticated cannot make the node buffer more, and a TLS ClientHello sent to a
/// node without TLS (whose first bytes read as a length of megabytes) fails at once.
const HANDSHAKE_FRAME_MAX_BYTES: u32 = 4 * 1024;
/// Versions the MAC input, so a later handshake cannot be confused with this one. v2 added
/// both sides' offers.
const DOMAIN: &[u8] = b"warren-cluster-handshake-v2";
/// The inter-node wire protocol this build speaks (frames after the handshake: requests,
/// responses, Raft entries). Bumped when a change would make a peer of the previous number
/// misread them; a build that can still speak the previous one keeps it as its minimum.
/// 1 is the first negotiated protocol (CBOR frames; the versions before negotiation wrote
/// JSON, then CBOR, and announced nothing). 2 has the same frames, but a node serves one
/// group's appends arriving on one connection in their order, so a leader may send the next
/// before the last is answered ([`PIPELINED_APPENDS_WIRE_VERSION`]); with a node of 1 the
/// leader waits for each answer. 3 adds the pre-vote request ([`PRE_VOTE_WIRE_VERSION`]);
/// a node of 2 or 1 is counted as granting it, as openraft does for a peer without one.
pub const WIRE_VERSION: u32 = 3;
/// The first wire protocol whose nodes serve a group's appends in order.
pub const PIPELINED_APPENDS_WIRE_VERSION: u32 = 2;
/// The first wire protocol whose nodes answer a pre-vote (`Request::PreVote`,
/// `GroupRequest::PreVote`); a node of an older one would fail to decode it and drop the
/// link.
pub const PRE_VOTE_WIRE_VERSION: u32 = 3;
/// The oldest wire protocol this build still speaks.
pub const WIRE_VERSION_MIN: u32 = 1;
/// Feature-flag names a node may advertise (a handshake frame stays under
/// `HANDSHAKE_FRAME_MAX_BYTES` with these).
pub const OFFER_FEATURES_MAX: usize = 64;
/// Longest feature-flag name a node may advertise, in bytes.
pub const OFFER_FEATURE_NAME_MAX_BYTES: usize = 40;

pub(crate) type Nonce = [u8; NONCE_BYTES];

/// What a node says of itself in the handshake: the wire-protocol versions it speaks
/// (inclusive range) and the feature flags it supports (names; their meaning is the
/// broker's, this crate only carries them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub wire_min: u32,
    pub wire_max: u32,
    pub features: Vec<String>,
}

impl Default for Offer {
    /// This build's wire protocols, no feature flags.
    fn default() -> Offer {
        Offer { wire_min: WIRE_VERSION_MIN, wire_max: WIRE_VERSION, features: Vec::new() }
    }
}

impl Offer {
    /// The highest version both speak, if any.
    pub fn common_version(&self, other: &Offer) -> Option<u32> {
        let (lo, hi) = (self.wire_min.max(other.wire_min), self.wire_max.min(other.wire_max));
        (lo <= hi).then_some(hi)
    }

    fn range(&self) -> String {
        if self.wire_min == self.wire_max {
            self.wire_min.to_string()
        } else {
            format!("{}..={}", self.wire_min, self.wire_max)
        }
    }

    /// Deterministic bytes for the MAC (length-prefixed, so lists cannot be re-split).
    fn mac_input(&self, m: &mut Hmac<Sha256>) {
        m.update(&self.wire_min.to_le_bytes());
        m.update(&self.wire_max.to_le_bytes());
        m.update(&(self.features.len() as u64).to_le_bytes());
        for f in &self.features {
            m.update(&(f.len() as u64).to_le_bytes());
            m.update(f.as_bytes());
        }
    }

    /// Within the bounds a peer accepts (so a handshake frame stays small).
    fn well_formed(&self) -> bool {
        self.wire_min <= self.wire_max
            && self.features.len() <= OFFER_FEATURES_MAX
            && self.features.iter().all(|f| !f.is_empty() && f.len() <= OFFER_FEATURE_NAME_MAX_BYTES)
    }
}

/// Why two offers cannot talk, naming both sides' versions (None: the peer sent none).
fn incompatible(me: &str, mine: &Offer, peer: &str, theirs: Option<&Offer>) -> Option<String> {
    match theirs {
        None => Some(format!(
            "incompatible wire protocol: {me} speaks version {}, {peer} announces none (a Warren version before \
             version negotiation; upgrade it)",
            mine.range()
        )),
        Some(t) if !t.well_formed() => Some(format!("{peer} sent a malformed offer")),
        Some(t) if mine.common_version(t).is_none() => Some(format!(
            "incompatible wire protocol versions: {me} speaks {}, {peer} speaks {}",
            mine.range(),
            t.range()
        )),
        Some(_) => None,
    }
}
type MacBytes = [u8; 32];

/// The shared secret of a cluster's nodes. Never empty; its `Debug` does not show it.
#[derive(Clone)]
pub struct Cookie(Arc<[u8]>);

impl Cookie {
    /// `None` for an empty cookie: it would authenticate anyone who also sends none.
    pub fn new(secret: &str) -> Option<Cookie> {
        if secret.is_empty() { None } else { Some(Cookie(Arc::from(secret.as_bytes()))) }
    }
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookie(..)")
    }
}

/// Which side a MAC speaks for.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    Initiator = 1,
    Acceptor = 2,
}

/// Who talks to whom on one connection, and both sides' nonces: what a MAC covers.
pub(crate) struct Transcript<'a> {
    pub(crate) initiator: &'a str,
    pub(crate) acceptor: &'a str,
    pub(crate) nonce_i: &'a Nonce,
    pub(crate) nonce_a: &'a Nonce,
    pub(crate) offer_i: &'a Offer,
    pub(crate) offer_a: &'a Offer,
}

impl Transcript<'_> {
    fn hmac(&self, cookie: &Cookie, role: Role) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&cookie.0).expect("HMAC takes a key of any length");
        m.update(DOMAIN);
        m.update(&[role as u8]);
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        for name in [self.initiator, self.acceptor] {
            m.update(&(name.len() as u64).to_le_bytes());
            m.update(name.as_bytes());
        }
        m.update(self.nonce_i);
        m.update(self.nonce_a);
        self.offer_i.mac_input(&mut m);
        self.offer_a.mac_input(&mut m);
        m
    }

    pub(crate) fn mac(&self, cookie: &Cookie, role: Role) -> MacBytes {
        self.hmac(cookie, role).finalize().into_bytes().into()
    }

    /// Constant-time check of a peer's MAC.
    pub(crate) fn verify(&self, cookie: &Cookie, role: Role, mac: &MacBytes) -> bool {
        self.hmac(cookie, role).verify_slice(mac).is_ok()
    }
}

pub(crate) fn nonce() -> Nonce {
    let mut n = [0; NONCE_BYTES];
    getrandom::fill(&mut n).expect("the OS random source failed while making a handshake nonce");
    n
}

/// The handshake's frames (the first frames on every inter-node connection).
#[derive(Serialize, Deserialize)]
pub(crate) enum Message {
    /// `offer` is None from a version before negotiation (serde's default).
    Hello {
        from: String,
        to: String,
        nonce: Nonce,
        #[serde(default)]
        offer: Option<Offer>,
    },
    Challenge {
        nonce: Nonce,
        #[serde(default)]
        offer: Option<Offer>,
    },
    Proof {
        mac: MacBytes,
    },
    Welcome {
        mac: MacBytes,
    },
    Refused {
        reason: String,
    },
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not finished within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// The peer closed the connection (or it failed) mid-handshake.
    Closed,
    /// A frame that is not the handshake's next step (e.g. a Raft request without a
    /// handshake, or a peer of another version).
    Unexpected(&'static str),
    /// The peer's proof does not match this node's cookie.
    CookieMismatch,
    /// The acceptor refused, saying why.
    Refused(String),
    /// The dialer asked for another node than this one.
    WrongNode { dialed: String },
    /// The TLS handshake failed (no certificate, one the cluster's CA did not sign, one for
    /// another host, or a peer that does not speak TLS).
    Tls(String),
    /// Too many connections were in their handshake (`transport::HANDSHAKES_IN_FLIGHT_MAX`).
    Busy,
    /// The two sides speak no common wire-protocol version (or the peer announced none);
    /// the text names both.
    Version(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Timeout => write!(f, "handshake not finished within {HANDSHAKE_TIMEOUT:?}"),
            HandshakeError::Closed => write!(f, "connection closed during the handshake"),
            HandshakeError::Unexpected(what) => write!(f, "unexpected frame in the handshake: {what}"),
            HandshakeError::CookieMismatch => {
                write!(f, "cookie mismatch (the peer's proof does not match this node's cluster cookie)")
            }
            HandshakeError::Refused(reason) => write!(f, "the peer refused the handshake: {reason}"),
            HandshakeError::WrongNode { dialed } => write!(f, "the peer dialed {dialed}, which is not this node"),
            HandshakeError::Tls(e) => write!(f, "TLS: {e}"),
            HandshakeError::Busy => write!(f, "too many connections in their handshake at once"),
            HandshakeError::Version(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The dialing side: prove knowledge of the cookie to `to`, then check its proof; the
/// acceptor's offer on success.
pub(crate) async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    cookie: &Cookie,
    me: &str,
    to: &str,
    offer: &Offer,
) -> Result<Offer, HandshakeError> {
    let nonce_i = nonce();
    let hello = Message::Hello { from: me.to_owned(), to: to.to_owned(), nonce: nonce_i, offer: Some(offer.clone()) };
    send(stream, &hello).await?;
    let (nonce_a, offer_a) = match recv(stream, buf).await? {
        Message::Challenge { nonce, offer: theirs } => {
            if let Some(e) = incompatible(me, offer, to, theirs.as_ref()) {
                return Err(HandshakeError::Version(e));
            }
            (nonce, theirs.expect("checked above"))
        }
        Message::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Unexpected("expected a challenge")),
    };
    let t = Transcript {
        initiator: me,
        acceptor: to,
        nonce_i: &nonce_i,
        nonce_a: &nonce_a,
        offer_i: offer,
        offer_a: &offer_a,
    };
    send(stream, &Message::Proof { mac: t.mac(cookie, Role::Initiator) }).await?;
    match recv(stream, buf).await? {
        Message::Welcome { mac } if t.verify(cookie, Role::Acceptor, &mac) => Ok(offer_a),
        Message::Welcome { .. } => Err(HandshakeError::CookieMismatch),
        Message::Refused { reason } => Err(HandshakeError::Refused(reason)),
        _ => Err(HandshakeError::Unexpected("expected a welcome")),
    }
}

/// The accepting side: check the dialer's proof, then prove itself; the dialer's name and
/// offer on success. On a failure the dialer is told why (when it got as far as a proof, or
/// its versions do not fit) before the caller drops the connection. `claimed` is set to the
/// name the dialer gave, for logs.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    cookie: &Cookie,
    me: &str,
    offer: &Offer,
    claimed: &mut Option<String>,
) -> Result<(String, Offer), HandshakeError> {
    let (from, nonce_i, offer_i) = match recv(stream, buf).await? {
        Message::Hello { from, to, nonce, offer: theirs } => {
            *claimed = Some(from.clone());
            if to != me {
                let e = HandshakeError::WrongNode { dialed: to };
                let _ =
                    send(stream, &Message::Refused { reason: format!("this node is {me}, not the one dialed") }).await;
                return Err(e);
            }
            // Before the proof: versions are not secret, and a peer that cannot speak ours
            // learns why at once instead of failing later on a frame it misreads.
            if let Some(e) = incompatible(me, offer, &from, theirs.as_ref()) {
                let _ = send(stream, &Message::Refused { reason: e.clone() }).await;
                return Err(HandshakeError::Version(e));
            }
            (from, nonce, theirs.expect("checked above"))
        }
        _ => return Err(HandshakeError::Unexpected("expected a hello")),
    };
    let nonce_a = nonce();
    send(stream, &Message::Challenge { nonce: nonce_a, offer: Some(offer.clone()) }).await?;
    let Message::Proof { mac } = recv(stream, buf).await? else {
        return Err(HandshakeError::Unexpected("expected a proof"));
    };
    let t = Transcript {
        initiator: &from,
        acceptor: me,
        nonce_i: &nonce_i,
        nonce_a: &nonce_a,
        offer_i: &offer_i,
        offer_a: offer,
    };
    if !t.verify(cookie, Role::Initiator, &mac) {
        let _ = send(stream, &Message::Refused { reason: "cookie mismatch".into() }).await;
        return Err(HandshakeError::CookieMismatch);
    }
    send(stream, &Message::Welcome { mac: t.mac(cookie, Role::Acceptor) }).await?;
    Ok((from, offer_i))
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, m: &Message) -> Result<(), HandshakeError> {
    write_frame(stream, m).await.map_err(|_| HandshakeError::Closed)
}

async fn recv<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<Message, HandshakeError> {
    match read_frame_detailed::<Message>(stream, buf, HANDSHAKE_FRAME_MAX_BYTES).await {
        Ok(m) => Ok(m),
        Err(ReadError::Closed) => Err(HandshakeError::Closed),
        Err(ReadError::Corrupt(_)) => Err(HandshakeError::Unexpected("a damaged frame")),
        Err(ReadError::Undecodable) => Err(HandshakeError::Unexpected("not a handshake frame")),
        Err(ReadError::TooLarge) => {
            Err(HandshakeError::Unexpected("a frame too large for the handshake (TLS from a peer that uses it?)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(min: u32, max: u32, features: &[&str]) -> Offer {
        Offer { wire_min: min, wire_max: max, features: features.iter().map(|f| f.to_string()).collect() }
    }

    #[test]
    fn a_mac_binds_the_cookie_the_role_the_names_both_nonces_and_both_offers() {
        let (c, other) = (Cookie::new("SECRET").unwrap(), Cookie::new("SECRET2").unwrap());
        let (n1, n2) = (nonce(), nonce());
        assert_ne!(n1, n2);
        let (o1, o2) = (offer(1, 1, &["a", "b"]), offer(1, 2, &["a"]));
        let t = Transcript {
            initiator: "a@h:1",
            acceptor: "b@h:2",
            nonce_i: &n1,
            nonce_a: &n2,
            offer_i: &o1,
            offer_a: &o2,
        };
        let mac = t.mac(&c, Role::Initiator);
        assert!(t.verify(&c, Role::Initiator, &mac));
        assert!(!t.verify(&other, Role::Initiator, &mac), "another cookie");
        assert!(!t.verify(&c, Role::Acceptor, &mac), "reflected as the other role");
        let swapped = Transcript { nonce_i: &n2, nonce_a: &n1, ..t };
        assert!(!swapped.verify(&c, Role::Initiator, &mac), "nonces swapped");
        let renamed = Transcript { initiator: "a@h:", acceptor: "1b@h:2", ..t };
        assert!(!renamed.verify(&c, Role::Initiator, &mac), "names re-split");
        let fewer = offer(1, 1, &["a"]);
        let downgraded = Transcript { offer_i: &fewer, ..t };
        assert!(!downgraded.verify(&c, Role::Initiator, &mac), "a feature dropped on the way");
        let resplit = offer(1, 1, &["ab"]);
        assert!(!Transcript { offer_i: &resplit, ..t }.verify(&c, Role::Initiator, &mac), "features re-split");
        let older = offer(1, 1, &["a"]);
        assert!(!Transcript { offer_a: &older, ..t }.verify(&c, Role::Initiator, &mac), "versions changed");
    }

    /// Both ends of one in-memory connection: (initiator's result, acceptor's result).
    async fn shake(
        cookie_i: &str,
        offer_i: Offer,
        cookie_a: &str,
        offer_a: Offer,
    ) -> (Result<Offer, HandshakeError>, Result<(String, Offer), HandshakeError>) {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let (ci, ca) = (Cookie::new(cookie_i).unwrap(), Cookie::new(cookie_a).unwrap());
        let dial = async move {
            let mut buf = Vec::new();
            initiate(&mut a, &mut buf, &ci, "i@h:1", "a@h:2", &offer_i).await
        };
        let serve = async move {
            let (mut buf, mut claimed) = (Vec::new(), None);
            accept(&mut b, &mut buf, &ca, "a@h:2", &offer_a, &mut claimed).await
        };
        tokio::join!(dial, serve)
    }

    #[tokio::test]
    async fn overlapping_versions_shake_hands_and_each_side_learns_the_others_features() {
        let (i, a) = shake("C", offer(1, 2, &["x", "y"]), "C", offer(2, 3, &["x"])).await;
        assert_eq!(i.unwrap(), offer(2, 3, &["x"]));
        assert_eq!(a.unwrap(), ("i@h:1".to_owned(), offer(1, 2, &["x", "y"])));
        assert_eq!(offer(1, 2, &[]).common_version(&offer(2, 3, &[])), Some(2));
        assert_eq!(offer(1, 1, &[]).common_version(&offer(2, 3, &[])), None);
    }

    #[tokio::test]
    async fn versions_that_do_not_overlap_are_refused_on_both_sides_naming_both() {
        let (i, a) = shake("C", offer(1, 1, &[]), "C", offer(2, 2, &[])).await;
        let Err(HandshakeError::Version(e)) = a else { panic!("acceptor: {a:?}") };
        assert_eq!(e, "incompatible wire protocol versions: a@h:2 speaks 2, i@h:1 speaks 1");
        let Err(HandshakeError::Refused(r)) = i else { panic!("initiator: {i:?}") };
        assert_eq!(r, e, "the dialer is told why");
        // A cookie mismatch is still one when the versions fit.
        let (i, a) = shake("C", offer(1, 1, &[]), "D", offer(1, 1, &[])).await;
        assert!(matches!(a, Err(HandshakeError::CookieMismatch)), "{a:?}");
        assert!(matches!(i, Err(HandshakeError::Refused(ref r)) if r == "cookie mismatch"), "{i:?}");
    }

    #[tokio::test]
    async fn a_hello_without_an_offer_is_refused_as_a_version_before_negotiation() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let old = async move {
            // What a node of the version before negotiation sends (no `offer` field).
            #[derive(Serialize)]
            enum OldMessage {
                Hello { from: String, to: String, nonce: Nonce },
            }
            let hello = OldMessage::Hello { from: "old@h:1".into(), to: "a@h:2".into(), nonce: nonce() };
            write_frame(&mut a, &hello).await.unwrap();
            let mut buf = Vec::new();
            recv(&mut a, &mut buf).await
        };
        let serve = async move {
            let (mut buf, mut claimed) = (Vec::new(), None);
            let c = Cookie::new("C").unwrap();
            accept(&mut b, &mut buf, &c, "a@h:2", &Offer::default(), &mut claimed).await
        };
        let (told, refused) = tokio::join!(old, serve);
        let Err(HandshakeError::Version(e)) = refused else { panic!("{refused:?}") };
        assert!(e.contains("old@h:1 announces none (a Warren version before version negotiation"), "{e}");
        assert!(matches!(told, Ok(Message::Refused { reason }) if reason == e));
    }

    #[test]
    fn an_empty_cookie_is_refused_and_debug_hides_the_secret() {
        assert!(Cookie::new("").is_none());
        assert_eq!(format!("{:?}", Cookie::new("SECRET").unwrap()), "Cookie(..)");
    }
}
