//! AMQPS and `--config` against the real `warren` binary: certificates made here with
//! rcgen, the broker configured by a rabbitmq.conf file, lapin (and a bare rustls client
//! where lapin cannot be made to misbehave) as clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::WarrenProcess;

/// Upper bound for a connection attempt or one step of the exchange.
const WAIT: Duration = Duration::from_secs(10);

/// A CA and the certificates it signed, as PEM files in a directory.
struct Pki {
    ca_pem: String,
    dir: PathBuf,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> (Pki, CertifiedIssuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("Warren test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let pki = Pki { ca_pem: ca.pem(), dir: dir.to_owned() };
        std::fs::write(pki.path(&format!("{name}-ca.pem")), &pki.ca_pem).expect("write ca");
        (pki, ca)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A server (for 127.0.0.1) or client certificate signed by `ca`; written as
    /// `<name>.pem` and `<name>.key`.
    fn leaf(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str, server: bool) -> Leaf {
        let sans = if server { vec!["127.0.0.1".to_owned()] } else { Vec::new() };
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, ca).expect("sign");
        let leaf = Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        std::fs::write(self.path(&format!("{name}.pem")), &leaf.cert_pem).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), &leaf.key_pem).expect("write key");
        leaf
    }
}

/// Certificates for a test: `ca` signs the server's and `client`'s; `other` (another CA)
/// signs `stranger`.
struct Certs {
    pki: Pki,
    client: Leaf,
    stranger: Leaf,
}

fn certs(dir: &Path) -> Certs {
    let (pki, ca) = Pki::new(dir, "main");
    let (other, other_ca) = Pki::new(dir, "other");
    pki.leaf(&ca, "server", true);
    let client = pki.leaf(&ca, "client", false);
    let stranger = other.leaf(&other_ca, "stranger", false);
    Certs { pki, client, stranger }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A broker whose AMQPS port is set by a config file with these `ssl_options` lines.
struct TlsBroker {
    process: WarrenProcess,
    tls_port: u16,
    _dir: tempfile::TempDir,
}

fn start(c: &Certs, ssl_options: &str) -> TlsBroker {
    start_with(c, ssl_options, false)
}

/// With `by_flag`, the file names another AMQPS port and `--amqps-port` overrides it.
fn start_with(c: &Certs, ssl_options: &str, by_flag: bool) -> TlsBroker {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_port = free_port();
    let file_port = if by_flag { free_port() } else { tls_port };
    let conf = dir.path().join("warren.conf");
    let p = |f: &str| c.pki.path(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "# AMQPS test broker\n\
             listeners.ssl.default = {file_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile   = {}\n\
             ssl_options.keyfile    = {}  # PKCS#8\n\
             {ssl_options}\n",
            p("main-ca.pem"),
            p("server.pem"),
            p("server.key")
        ),
    )
    .expect("write config");
    let port_flag = tls_port.to_string();
    let mut args = vec!["--config", conf.to_str().expect("utf-8")];
    if by_flag {
        args.extend(["--amqps-port", &port_flag]);
    }
    let process = WarrenProcess::start(&dir.path().join("data"), None, &args);
    TlsBroker { process, tls_port, _dir: dir }
}

impl TlsBroker {
    fn uri(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f?heartbeat=0", self.tls_port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    /// Wait for `needle` in the broker's log.
    async fn log_shows(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.process.log().contains(needle) {
            assert!(Instant::now() < deadline, "log never showed {needle:?}:\n{}", self.process.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// lapin over TLS, trusting `ca_pem`, presenting `identity` if given.
async fn connect(b: &TlsBroker, ca_pem: &str, identity: Option<&Leaf>) -> lapin::Result<Connection> {
    let tls = OwnedTLSConfig {
        identity: identity.map(|l| OwnedIdentity::PKCS8 {
            pem: l.cert_pem.clone().into_bytes(),
            key: l.key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(ca_pem.to_owned()),
    };
    let runtime = lapin::runtime::default_runtime().expect("runtime");
    let uri = b.uri();
    let connecting = Connection::connect_with_config(&uri, ConnectionProperties::default(), tls, runtime);
    tokio::time::timeout(WAIT, connecting).await.expect("connect attempt timed out")
}

/// Declare a queue, publish to it and consume the message back.
async fn round_trip(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("declare");
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), b"over tls", BasicProperties::default())
        .await
        .expect("publish");
    let mut consumer = ch
        .basic_consume(queue.into(), "c".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let d =
        tokio::time::timeout(WAIT, consumer.next()).await.expect("delivery in time").expect("delivery").expect("ok");
    assert_eq!(&d.data[..], b"over tls");
    d.ack(BasicAckOptions::default()).await.expect("ack");
}

#[tokio::test]
async fn amqps_publish_and_consume_without_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let b = start(&c, "ssl_options.verify = verify_none");
    let conn = connect(&b, &c.pki.ca_pem, None).await.expect("amqps connect");
    round_trip(&conn, "tls-q").await;
    conn.close(200, "bye".into()).await.expect("close");
    // The plain port still serves plain AMQP.
    let plain = Connection::connect(&b.process.uri(), ConnectionProperties::default()).await.expect("amqp");
    round_trip(&plain, "plain-q").await;
}

#[tokio::test]
async fn amqps_port_flag_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let b = start_with(&c, "ssl_options.verify = verify_none", true);
    let conn = connect(&b, &c.pki.ca_pem, None).await.expect("amqps on the flag's port");
    round_trip(&conn, "flag-q").await;
}

#[tokio::test]
async fn required_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let b = start(&c, "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true");
    let conn = connect(&b, &c.pki.ca_pem, Some(&c.client)).await.expect("connect with a client certificate");
    round_trip(&conn, "mtls-q").await;
    assert!(connect(&b, &c.pki.ca_pem, None).await.is_err(), "a client without a certificate got in");
    b.log_shows("TLS handshake failed").await;
    assert!(connect(&b, &c.pki.ca_pem, Some(&c.stranger)).await.is_err(), "a certificate from another CA was accepted");
    // The refused handshakes did not disturb the established connection.
    round_trip(&conn, "mtls-q2").await;
}

#[tokio::test]
async fn optional_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let b = start(&c, "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = false");
    let anonymous = connect(&b, &c.pki.ca_pem, None).await.expect("no certificate is allowed");
    round_trip(&anonymous, "opt-q1").await;
    let with_cert = connect(&b, &c.pki.ca_pem, Some(&c.client)).await.expect("a valid certificate is allowed");
    round_trip(&with_cert, "opt-q2").await;
    assert!(connect(&b, &c.pki.ca_pem, Some(&c.stranger)).await.is_err(), "a certificate that is sent is verified");
}

#[tokio::test]
async fn server_certificate_from_an_unknown_ca_is_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let b = start(&c, "ssl_options.verify = verify_none");
    let other_ca = std::fs::read_to_string(c.pki.path("other-ca.pem")).unwrap();
    assert!(connect(&b, &other_ca, None).await.is_err());
}

/// A bare rustls client limited to `version`, trusting the test CA.
async fn handshake(
    b: &TlsBroker,
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> std::io::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(b.addr()).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("handshake in time")?;
    // The broker answers the protocol header with connection.start: AMQP runs over it.
    tls.write_all(&wire::PROTOCOL_HEADER).await?;
    let mut frame_head = [0u8; 7];
    tokio::time::timeout(WAIT, tls.read_exact(&mut frame_head)).await.expect("reply in time")?;
    assert_eq!(frame_head[0], 1, "a method frame");
    Ok(())
}

#[tokio::test]
async fn versions_restrict_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let b = start(&c, "ssl_options.verify = verify_none\nssl_options.versions.1 = tlsv1.3");
    handshake(&b, &c.pki.ca_pem, &rustls::version::TLS13).await.expect("TLS 1.3 client");
    let e = handshake(&b, &c.pki.ca_pem, &rustls::version::TLS12).await.expect_err("TLS 1.2 client got in");
    assert!(e.to_string().contains("ProtocolVersion") || e.to_string().contains("version"), "{e}");
    b.log_shows("TLS handshake failed").await;

    let b12 = start(&c, "ssl_options.versions.1 = tlsv1.2");
    handshake(&b12, &c.pki.ca_pem, &rustls::version::TLS12).await.expect("TLS 1.2 client");
    assert!(handshake(&b12, &c.pki.ca_pem, &rustls::version::TLS13).await.is_err(), "TLS 1.3 client got in");
}

#[tokio::test]
async fn plain_amqp_on_the_tls_port_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let b = start(&c, "ssl_options.verify = verify_none");
    let mut s = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(&wire::PROTOCOL_HEADER).await.unwrap();
    let mut reply = Vec::new();
    // Whatever comes back (a TLS alert at most), the broker closes the socket.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut reply)).await.expect("the broker closed the socket");
    assert!(!reply.starts_with(b"AMQP"), "no AMQP over the TLS port: {reply:?}");
    b.log_shows("TLS handshake failed").await;
    // A TLS client is served as before.
    let conn = connect(&b, &c.pki.ca_pem, None).await.expect("amqps connect");
    round_trip(&conn, "after-garbage").await;
}

/// Run warren with `args` until it exits (it must, within WAIT); (status, stderr).
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--amqp-port",
            &free_port().to_string(),
            "--bind",
            "127.0.0.1",
            "--management-port",
            "0",
            "--prometheus-port",
            "0",
        ])
        .env("WARREN_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn warren");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren kept running with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(stderr_path).unwrap())
}

#[test]
fn unknown_key_or_bad_value_stops_startup_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "heartbeat = 30\n# comment\nhearbeat = 5\n").unwrap();
    let (status, stderr) = run_to_exit(&["--config", conf.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains(&format!("{}:3: hearbeat: unknown key", conf.display())), "{stderr}");

    std::fs::write(&conf, "disk_free_limit.absolute = lots\n").unwrap();
    let (status, stderr) = run_to_exit(&["--config", conf.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains(&format!("{}:1: disk_free_limit.absolute:", conf.display())), "{stderr}");
}

#[test]
fn bad_tls_files_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let conf = dir.path().join("tls.conf");
    let p = |f: &str| c.pki.path(f).display().to_string();
    // The client's key does not match the server's certificate.
    std::fs::write(
        &conf,
        format!(
            "listeners.ssl.default = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n",
            free_port(),
            p("server.pem"),
            p("client.key")
        ),
    )
    .unwrap();
    let (status, stderr) = run_to_exit(&["--config", conf.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("ssl_options.certfile"), "{stderr}");

    std::fs::write(
        &conf,
        format!("ssl_options.certfile = {}\nssl_options.keyfile = /nonexistent.key\n", p("server.pem")),
    )
    .unwrap();
    let (status, stderr) = run_to_exit(&["--config", conf.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("ssl_options.keyfile /nonexistent.key"), "{stderr}");
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file_port = free_port();
    let conf = dir.path().join("warren.conf");
    std::fs::write(&conf, format!("listeners.tcp.default = 127.0.0.1:{file_port}\nheartbeat = 30\n")).unwrap();
    // WarrenProcess passes --amqp-port (a port of its own) and waits until it accepts.
    let w = WarrenProcess::start(&dir.path().join("data"), None, &["--config", conf.to_str().unwrap()]);
    assert_ne!(w.port, file_port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err(), "the file's port is not used");
}
