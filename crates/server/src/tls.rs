//! AMQPS: AMQP over TLS (rustls, aws-lc-rs provider). The TLS handshake runs in the
//! connection's own task, under its own timeout; then the same connection code as for
//! plain TCP runs over the decrypted stream.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::warn;

use crate::config::{ClientAuth, ClusterTlsFiles, TlsConfig, TlsVersion};
use crate::connection::{ClientReader, Endpoint, serve_stream, socket_closed};
use crate::state::ServerState;

/// A TLS setting that cannot be used (unreadable file, no certificate, key not matching
/// the certificate, …): a startup error.
#[derive(Debug)]
pub struct TlsSetupError(String);

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// What AMQPS listeners accept connections with. Cheap to clone (shared config).
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl TlsAcceptor {
    /// Load the certificates and key and build the server's TLS configuration.
    pub fn new(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = cfg
            .versions
            .iter()
            .map(|v| match v {
                TlsVersion::Tls12 => &rustls::version::TLS12,
                TlsVersion::Tls13 => &rustls::version::TLS13,
            })
            .collect();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| TlsSetupError(format!("ssl_options.versions: {e}")))?;
        let builder = match cfg.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                let ca = cfg.cacertfile.as_deref().ok_or_else(|| {
                    TlsSetupError("ssl_options.cacertfile is required with verify = verify_peer".into())
                })?;
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca, "ssl_options.cacertfile")? {
                    roots.add(cert).map_err(|e| {
                        TlsSetupError(format!("ssl_options.cacertfile {}: unusable CA certificate: {e}", ca.display()))
                    })?;
                }
                let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if cfg.client_auth == ClientAuth::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier =
                    verifier.build().map_err(|e| TlsSetupError(format!("client certificate verification: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = read_certs(&cfg.certfile, "ssl_options.certfile")?;
        let key = PrivateKeyDer::from_pem_file(&cfg.keyfile).map_err(|e| {
            TlsSetupError(format!("ssl_options.keyfile {}: no usable private key: {e}", cfg.keyfile.display()))
        })?;
        let server = builder.with_single_cert(chain, key).map_err(|e| {
            TlsSetupError(format!(
                "ssl_options.certfile {} with ssl_options.keyfile {}: {e}",
                cfg.certfile.display(),
                cfg.keyfile.display()
            ))
        })?;
        Ok(TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            handshake_timeout: cfg.handshake_timeout,
        })
    }
}

/// The inter-node link's TLS (`warren.cluster_tls.*`): the node's certificate both when it
/// accepts and when it dials, peers' certificates verified against `cacertfile` both ways.
/// TLS 1.3 and 1.2 (rustls's safe defaults).
pub fn cluster_link_tls(files: &ClusterTlsFiles) -> Result<cluster::LinkTls, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.cacertfile, "warren.cluster_tls.cacertfile")? {
        roots.add(cert).map_err(|e| {
            TlsSetupError(format!(
                "warren.cluster_tls.cacertfile {}: unusable CA certificate: {e}",
                files.cacertfile.display()
            ))
        })?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&files.certfile, "warren.cluster_tls.certfile")?;
    let key = PrivateKeyDer::from_pem_file(&files.keyfile).map_err(|e| {
        TlsSetupError(format!("warren.cluster_tls.keyfile {}: no usable private key: {e}", files.keyfile.display()))
    })?;
    let pair = |e: rustls::Error| {
        TlsSetupError(format!(
            "warren.cluster_tls.certfile {} with warren.cluster_tls.keyfile {}: {e}",
            files.certfile.display(),
            files.keyfile.display()
        ))
    };
    let versions = |e: rustls::Error| TlsSetupError(format!("warren.cluster_tls: {e}"));
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsSetupError(format!("warren.cluster_tls: peer certificate verification: {e}")))?;
    let acceptor = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(pair)?;
    let connector = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(versions)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(pair)?;
    Ok(cluster::LinkTls { acceptor: Arc::new(acceptor), connector: Arc::new(connector) })
}

/// Every certificate in a PEM file (at least one).
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bad = |e: String| TlsSetupError(format!("{key} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Serve one AMQPS connection: the TLS handshake (bounded by `ssl_handshake_timeout`),
/// then AMQP. A failed handshake is logged once and ends only this connection.
pub(crate) async fn serve_tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<ServerState>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let tcp = Arc::new(stream);
    let accept = acceptor.inner.accept(TcpIo(tcp.clone()));
    let tls = match tokio::time::timeout(acceptor.handshake_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            warn!(%peer, timeout_ms = acceptor.handshake_timeout.as_millis(), "TLS handshake timed out");
            return;
        }
    };
    let (rd, wr) = tokio::io::split(tls);
    serve_stream(TlsReader { rd, tcp }, wr, Endpoint { peer, local, tls: true }, state).await;
}

/// The read side of an AMQPS connection, with the socket kept at hand to check whether
/// the peer is gone while the connection is not reading (see `socket_closed`).
struct TlsReader {
    rd: ReadHalf<TlsStream<TcpIo>>,
    tcp: Arc<TcpStream>,
}

impl AsyncRead for TlsReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl ClientReader for TlsReader {
    fn peer_closed(&self) -> bool {
        socket_closed(&self.tcp)
    }
}

/// A TCP stream shared with [`TlsReader`] (an `Arc`, as tokio's own split halves do), so
/// the TLS layer can own its I/O while the socket stays reachable for `socket_closed`.
struct TcpIo(Arc<TcpStream>);

impl AsyncRead for TcpIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // try_read clears the readiness on WouldBlock, so the next poll waits again.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-close (FIN after TLS's close_notify), as TcpStream's own shutdown does.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}
