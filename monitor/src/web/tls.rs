//! Serving the web config: loading the certificates and keys a `config::WebConfig` names into a
//! rustls server configuration (ring provider; client certificates checked as Go's ClientAuthType
//! says), keeping it current, and a TLS listener for `axum::serve`. exporter-toolkit re-reads its
//! file on every request and handshake; here each new connection and each request first compares
//! the file's and the certificates' metadata (inode, size, mtime) with what was loaded, and reloads
//! only when one changed, so certificate rotation (including Kubernetes' symlink swap of a mounted
//! Secret) needs no restart and an unchanged file costs a few `stat`s. A reload that fails keeps the
//! last good configuration and logs one warning per change. Handshakes run in their own tasks, so
//! a client that never finishes one cannot hold up the others.
use std::{
    io,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::anyhow;
use log::{debug, info, warn};
use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::{ring as provider, CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use crate::web::{
    config::{self, ClientAuth, Curve, Pem, TlsSettings, TlsVersion, WebConfig},
    limits::{Counted, Limits},
};

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A loaded configuration: the parsed file and, with TLS, the rustls config built from it.
#[derive(Debug)]
pub struct Active {
    pub config: WebConfig,
    pub tls: Option<Arc<ServerConfig>>,
}

/// Reads, parses and loads `path` (certificates included). One-line errors.
pub fn load(path: &Path) -> anyhow::Result<Active> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read web config {name}: {e}; check --web.config.file"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let config = config::parse(&text, &name, dir)?;
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(server_config(t).map_err(|e| anyhow!("invalid web config {name}: {e}"))?)),
        None => None,
    };
    Ok(Active { config, tls })
}

/// The files a configuration reads besides itself.
fn named_files(config: &WebConfig) -> Vec<PathBuf> {
    let Some(t) = &config.tls else { return Vec::new() };
    [&t.cert, &t.key]
        .into_iter()
        .chain(t.client_ca.as_ref())
        .filter_map(|p| match p {
            Pem::File(f) => Some(f.clone()),
            Pem::Inline(_) => None,
        })
        .collect()
}

/// What identifies a file's content cheaply; `None` when it cannot be read.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The web config file, reloaded when it or a certificate it names changes.
#[derive(Debug)]
pub struct WebConfigSource {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    active: Arc<Active>,
    /// Files whose change triggers a reload: the good config's and the last failed attempt's.
    watched: Vec<PathBuf>,
    /// Stamps of the config file and `watched` when they were last loaded (or tried).
    seen: Vec<Stamp>,
}

impl WebConfigSource {
    /// Loads the file; any problem is an error (the agent refuses to start). Warnings are logged.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let seen_config = stamp(path);
        let active = load(path)?;
        for w in &active.config.warnings {
            warn!("web config {}: {w}", path.display());
        }
        let watched = named_files(&active.config);
        let mut seen = vec![seen_config];
        seen.extend(watched.iter().map(|p| stamp(p)));
        Ok(Self { path: path.to_path_buf(), state: Mutex::new(State { active: Arc::new(active), watched, seen }) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stamps(&self, watched: &[PathBuf]) -> Vec<Stamp> {
        std::iter::once(stamp(&self.path)).chain(watched.iter().map(|p| stamp(p))).collect()
    }

    /// The configuration to use now: reloaded first if a file changed since it was loaded.
    pub fn current(&self) -> Arc<Active> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.stamps(&st.watched);
        if now == st.seen {
            return Arc::clone(&st.active);
        }
        let name = self.path.display();
        let old_watched = st.watched.clone();
        let good_files = named_files(&st.active.config);
        match load(&self.path) {
            Ok(next) if next.tls.is_some() != st.active.tls.is_some() => {
                warn!("web config {name}: switching between HTTP and HTTPS needs a restart; keeping the previous configuration");
                st.watched = union(good_files, named_files(&next.config));
            }
            Ok(next) => {
                info!(
                    "web config {name} changed: reloaded ({})",
                    if next.tls.is_some() { "TLS" } else { "plain HTTP" }
                );
                for w in &next.config.warnings {
                    warn!("web config {name}: {w}");
                }
                st.watched = named_files(&next.config);
                st.active = Arc::new(next);
            }
            Err(e) => {
                warn!("{e:#}; keeping the previous web configuration until the file is fixed");
                // Watch what the broken file names too, so creating a missing certificate retries.
                let attempted = std::fs::read_to_string(&self.path)
                    .ok()
                    .and_then(|t| config::parse(&t, "", self.path.parent().unwrap_or(Path::new("."))).ok())
                    .map(|c| named_files(&c))
                    .unwrap_or_default();
                st.watched = union(good_files, attempted);
            }
        }
        // Stamps taken before loading where there are some, so that a file changed while it was
        // being read is read again next time.
        let before: Vec<(PathBuf, Stamp)> = old_watched.into_iter().zip(now.iter().skip(1).copied()).collect();
        let seen = st.watched.iter().map(|p| before.iter().find(|(q, _)| q == p).map_or_else(|| stamp(p), |(_, s)| *s));
        st.seen = std::iter::once(now[0]).chain(seen).collect();
        Arc::clone(&st.active)
    }
}

fn union(mut a: Vec<PathBuf>, b: Vec<PathBuf>) -> Vec<PathBuf> {
    for p in b {
        if !a.contains(&p) {
            a.push(p);
        }
    }
    a
}

fn read_pem(pem: &Pem, key: &str) -> Result<Vec<u8>, String> {
    match pem {
        Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        Pem::File(path) => std::fs::read(path).map_err(|e| {
            format!("cannot read tls_server_config.{key}_file {}: {e}; check the path (relative paths are relative to the web config's directory)", path.display())
        }),
    }
}

fn certificates(pem: &Pem, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = pem.describe(key);
    let certs = CertificateDer::pem_slice_iter(&read_pem(pem, key)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_server_config {what}: bad PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!("tls_server_config {what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// Builds the rustls server configuration; errors name the setting or file at fault.
pub fn server_config(t: &TlsSettings) -> Result<ServerConfig, String> {
    let mut crypto = provider::default_provider();
    if !t.cipher_suites.is_empty() {
        let mut suites: Vec<_> = crypto.cipher_suites.iter().filter(|s| s.tls13().is_some()).copied().collect();
        for name in &t.cipher_suites {
            if let Some(s) = crypto.cipher_suites.iter().find(|s| s.suite().as_str() == Some(name)) {
                suites.push(*s);
            }
        }
        crypto.cipher_suites = suites;
    }
    if !t.curves.is_empty() {
        crypto.kx_groups = t
            .curves
            .iter()
            .map(|c| match c {
                Curve::X25519 => provider::kx_group::X25519,
                Curve::P256 => provider::kx_group::SECP256R1,
                Curve::P384 => provider::kx_group::SECP384R1,
            })
            .collect();
    }
    let crypto = Arc::new(crypto);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
            .map(|(_, p)| p)
            .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&crypto))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match client_verifier(t, &crypto)? {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let certs = certificates(&t.cert, "cert")?;
    let key_what = t.key.describe("key");
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&t.key, "key")?)
        .map_err(|e| format!("tls_server_config {key_what} holds no usable PEM private key ({e})"))?;
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "tls_server_config {key_what} does not belong to the certificate in {}; give the key the certificate was made for",
            t.cert.describe("cert")
        ),
        e => format!("tls_server_config {} / {key_what}: {e}", t.cert.describe("cert")),
    })?;
    config.ignore_client_order = t.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn client_verifier(
    t: &TlsSettings,
    crypto: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
    let algorithms = crypto.signature_verification_algorithms;
    let inner: Arc<dyn ClientCertVerifier> = match t.client_auth {
        ClientAuth::NoClientCert => return Ok(None),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            Arc::new(AnyCert { mandatory: t.client_auth.requires(), algorithms })
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = t.client_ca.as_ref().ok_or("client certificates are verified but client_ca_file is not set")?;
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "client_ca")? {
                roots.add(cert).map_err(|e| format!("tls_server_config {}: {e}", ca.describe("client_ca")))?;
            }
            let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(crypto));
            if !t.client_auth.requires() {
                b = b.allow_unauthenticated();
            }
            b.build().map_err(|e| format!("tls_server_config {}: {e}", ca.describe("client_ca")))?
        }
    };
    if t.client_allowed_sans.is_empty() {
        return Ok(Some(inner));
    }
    let sans = t
        .client_allowed_sans
        .iter()
        .map(|s| {
            ServerName::try_from(s.clone())
                .map_err(|_| format!("tls_server_config.client_allowed_sans: bad entry {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Arc::new(AllowedSans { inner, sans })))
}

/// RequestClientCert / RequireAnyClientCert: a certificate is asked for (or required) but not
/// checked against a CA; the handshake signature still proves the client holds its key.
#[derive(Debug)]
struct AnyCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// client_allowed_sans: after `inner` accepts the certificate, one of its DNS or IP SANs must be
/// in the list.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.sans.iter().any(|san| cert.verify_is_valid_for_subject_name(san).is_ok()) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS connections for `axum::serve`: a task accepts TCP connections and runs each handshake in a
/// task of its own with the configuration current at accept time; finished ones queue here.
/// Each connection holds one of `limits`' connection slots from before its TCP accept, so
/// connections in handshake count against --web.max-connections too.
pub struct TlsListener {
    rx: mpsc::Receiver<(Counted<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: tokio::net::TcpListener, source: Arc<WebConfigSource>, limits: Arc<Limits>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, source, tx, limits));
        Ok(Self { rx, local })
    }
}

async fn accept_loop(
    tcp: tokio::net::TcpListener,
    source: Arc<WebConfigSource>,
    tx: mpsc::Sender<(Counted<TlsStream<TcpStream>>, SocketAddr)>,
    limits: Arc<Limits>,
) {
    while !tx.is_closed() {
        let slot = limits.connection_slot().await;
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(config) = source.current().tls.clone() else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((Counted::new(tls, slot), peer)).await;
                }
                Ok(Err(e)) => debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => debug!("TLS handshake with {peer} timed out after {HANDSHAKE_TIMEOUT:?}"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Counted<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
