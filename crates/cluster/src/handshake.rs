//! Inter-node authentication: the shared [`Cookie`] (Erlang's cookie) and the handshake every
//! inter-node TCP connection runs before any Raft or ping frame is accepted.
//!
//! The exchange follows Erlang's distribution handshake (initiator proves first, so the
//! acceptor never hands a proof to an unauthenticated dialer):
//!
//! ```text
//! initiator                                   acceptor
//!   Hello { from, to, nonce_i }        ──▶      refuses if `to` is not its name
//!                                      ◀──      Challenge { nonce_a }
//!   Proof { mac_i }                    ──▶      checks mac_i
//!                                      ◀──      Welcome { mac_a }  |  Refused { reason }
//!   checks mac_a
//! ```
//!
//! `mac = HMAC-SHA256(cookie, DOMAIN | role | from | to | nonce_i | nonce_a)`: both nonces are
//! fresh per connection (no replay), the role byte keeps one side's proof from being reflected
//! as the other's, and the names bind the proof to who claims to talk to whom. The cookie
//! never crosses the wire. Frames are the transport's (length, crc32c, JSON); the traffic after
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
/// Versions the MAC input, so a later handshake cannot be confused with this one.
const DOMAIN: &[u8] = b"warren-cluster-handshake-v1";

pub(crate) type Nonce = [u8; NONCE_BYTES];
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
    Hello { from: String, to: String, nonce: Nonce },
    Challenge { nonce: Nonce },
    Proof { mac: MacBytes },
    Welcome { mac: MacBytes },
    Refused { reason: String },
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
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The dialing side: prove knowledge of the cookie to `to`, then check its proof.
pub(crate) async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    cookie: &Cookie,
    me: &str,
    to: &str,
) -> Result<(), HandshakeError> {
    let nonce_i = nonce();
    send(stream, &Message::Hello { from: me.to_owned(), to: to.to_owned(), nonce: nonce_i }).await?;
    let nonce_a = match recv(stream, buf).await? {
        Message::Challenge { nonce } => nonce,
        Message::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        _ => return Err(HandshakeError::Unexpected("expected a challenge")),
    };
    let t = Transcript { initiator: me, acceptor: to, nonce_i: &nonce_i, nonce_a: &nonce_a };
    send(stream, &Message::Proof { mac: t.mac(cookie, Role::Initiator) }).await?;
    match recv(stream, buf).await? {
        Message::Welcome { mac } if t.verify(cookie, Role::Acceptor, &mac) => Ok(()),
        Message::Welcome { .. } => Err(HandshakeError::CookieMismatch),
        Message::Refused { reason } => Err(HandshakeError::Refused(reason)),
        _ => Err(HandshakeError::Unexpected("expected a welcome")),
    }
}

/// The accepting side: check the dialer's proof, then prove itself; the dialer's name on
/// success. On a failure the dialer is told why (when it got as far as a proof) before the
/// caller drops the connection. `claimed` is set to the name the dialer gave, for logs.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    cookie: &Cookie,
    me: &str,
    claimed: &mut Option<String>,
) -> Result<String, HandshakeError> {
    let (from, nonce_i) = match recv(stream, buf).await? {
        Message::Hello { from, to, nonce } => {
            *claimed = Some(from.clone());
            if to != me {
                let e = HandshakeError::WrongNode { dialed: to };
                let _ =
                    send(stream, &Message::Refused { reason: format!("this node is {me}, not the one dialed") }).await;
                return Err(e);
            }
            (from, nonce)
        }
        _ => return Err(HandshakeError::Unexpected("expected a hello")),
    };
    let nonce_a = nonce();
    send(stream, &Message::Challenge { nonce: nonce_a }).await?;
    let Message::Proof { mac } = recv(stream, buf).await? else {
        return Err(HandshakeError::Unexpected("expected a proof"));
    };
    let t = Transcript { initiator: &from, acceptor: me, nonce_i: &nonce_i, nonce_a: &nonce_a };
    if !t.verify(cookie, Role::Initiator, &mac) {
        let _ = send(stream, &Message::Refused { reason: "cookie mismatch".into() }).await;
        return Err(HandshakeError::CookieMismatch);
    }
    send(stream, &Message::Welcome { mac: t.mac(cookie, Role::Acceptor) }).await?;
    Ok(from)
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

    #[test]
    fn a_mac_binds_the_cookie_the_role_the_names_and_both_nonces() {
        let (c, other) = (Cookie::new("SECRET").unwrap(), Cookie::new("SECRET2").unwrap());
        let (n1, n2) = (nonce(), nonce());
        assert_ne!(n1, n2);
        let t = Transcript { initiator: "a@h:1", acceptor: "b@h:2", nonce_i: &n1, nonce_a: &n2 };
        let mac = t.mac(&c, Role::Initiator);
        assert!(t.verify(&c, Role::Initiator, &mac));
        assert!(!t.verify(&other, Role::Initiator, &mac), "another cookie");
        assert!(!t.verify(&c, Role::Acceptor, &mac), "reflected as the other role");
        let swapped = Transcript { nonce_i: &n2, nonce_a: &n1, ..t };
        assert!(!swapped.verify(&c, Role::Initiator, &mac), "nonces swapped");
        let t = Transcript { initiator: "a@h:1", acceptor: "b@h:2", nonce_i: &n1, nonce_a: &n2 };
        let renamed = Transcript { initiator: "a@h:", acceptor: "1b@h:2", ..t };
        assert!(!renamed.verify(&c, Role::Initiator, &mac), "names re-split");
    }

    #[test]
    fn an_empty_cookie_is_refused_and_debug_hides_the_secret() {
        assert!(Cookie::new("").is_none());
        assert_eq!(format!("{:?}", Cookie::new("SECRET").unwrap()), "Cookie(..)");
    }
}
