//! TLS on both sides of tether, with rustls: a cluster's [`Connector`] dials its nodes
//! (sessions, health checks, discovery), a listener's [`Acceptor`] serves applications.
//!
//! Both are built from the files a `tls` key names each time the configuration is loaded or
//! reloaded, so a reload picks up rotated certificates. A file that cannot be read or parsed
//! fails the load, and a reload that fails leaves the running configuration in place.
//!
//! One connector serves every connection of its cluster, so its session cache lets a
//! reconnect after a failover resume a TLS session instead of paying a full handshake.

mod failure;
mod stream;

pub use failure::HandshakeFailure;
pub use stream::{ReadHalf, Stream, WriteHalf, adopt};

use crate::address::Address;
use crate::config::{Config, ListenerTlsConfig, UpstreamTlsConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Why a `tls` setting could not be put to use, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {detail}")]
    File { path: String, detail: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
}

/// The crypto every config here uses: ring's, which builds with a C compiler alone.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, and what they hash to (to notice a rotation).
fn certificates(
    path: &Path,
    digest: &mut DefaultHasher,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = || path.display().to_string();
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            path: shown(),
            detail: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: shown() });
    }
    for certificate in &certificates {
        certificate.as_ref().hash(digest);
    }
    Ok(certificates)
}

fn private_key(
    path: &Path,
    digest: &mut DefaultHasher,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    key.secret_der().hash(digest);
    Ok(key)
}

fn roots(ca_file: Option<&Path>, digest: &mut DefaultHasher) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for certificate in certificates(path, digest)? {
                roots.add(certificate).map_err(|e| TlsError::Invalid {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Invalid {
                    what: "the system's trusted roots".into(),
                    detail: "none found; name a ca_file".into(),
                });
            }
        }
    }
    Ok(roots)
}

/// How tether dials one cluster's nodes over TLS.
pub struct Connector {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    insecure: bool,
    /// Of the settings and every file's content: equal digests mean nothing rotated.
    digest: u64,
}

impl Connector {
    pub fn load(config: &UpstreamTlsConfig) -> Result<Connector, TlsError> {
        let mut digest = DefaultHasher::new();
        config.hash(&mut digest);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = if config.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        } else {
            builder.with_root_certificates(roots(config.ca_file.as_deref(), &mut digest)?)
        };
        let client = match (&config.cert_file, &config.key_file) {
            (Some(cert_file), Some(key_file)) => builder
                .with_client_auth_cert(
                    certificates(cert_file, &mut digest)?,
                    private_key(key_file, &mut digest)?,
                )
                .map_err(|e| TlsError::Invalid {
                    what: format!("{} with {}", cert_file.display(), key_file.display()),
                    detail: e.to_string(),
                })?,
            _ => builder.with_no_client_auth(),
        };
        let server_name = match &config.server_name {
            Some(name) => {
                Some(
                    ServerName::try_from(name.clone()).map_err(|e| TlsError::Invalid {
                        what: format!("server_name {name:?}"),
                        detail: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        Ok(Connector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name,
            insecure: config.insecure,
            digest: digest.finish(),
        })
    }

    /// Whether certificates go unverified (`insecure = true`).
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The name a node at `address` is verified against.
    fn server_name(&self, address: &Address) -> Result<ServerName<'static>, HandshakeFailure> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        match address {
            Address::Ip(addr) => Ok(ServerName::IpAddress(addr.ip().into())),
            Address::Name { host, .. } => ServerName::try_from(host.clone())
                .map_err(|_| HandshakeFailure::Other(format!("{host:?} is not a valid TLS name"))),
        }
    }

    /// Runs the client handshake on a fresh connection to `address`. The caller bounds it
    /// in time.
    pub async fn connect(
        &self,
        address: &Address,
        tcp: TcpStream,
    ) -> Result<Handshaken, HandshakeFailure> {
        let name = self.server_name(address)?;
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| HandshakeFailure::classify(&e))?;
        let resumed = matches!(
            stream.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        Ok(Handshaken {
            stream: Stream::Tls(Box::new(stream.into())),
            resumed,
        })
    }
}

/// A connection through its TLS handshake.
pub struct Handshaken {
    pub stream: Stream,
    /// The session was resumed: no certificate exchange, one round trip less.
    pub resumed: bool,
}

/// How one listener serves TLS to applications.
pub struct Acceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    digest: u64,
}

impl Acceptor {
    pub fn load(config: &ListenerTlsConfig) -> Result<Acceptor, TlsError> {
        let mut digest = DefaultHasher::new();
        config.hash(&mut digest);
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match &config.client_ca_file {
            Some(path) => {
                let roots = roots(Some(path), &mut digest)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Invalid {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let server = builder
            .with_single_cert(
                certificates(&config.cert_file, &mut digest)?,
                private_key(&config.key_file, &mut digest)?,
            )
            .map_err(|e| TlsError::Invalid {
                what: format!(
                    "{} with {}",
                    config.cert_file.display(),
                    config.key_file.display()
                ),
                detail: e.to_string(),
            })?;
        Ok(Acceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            digest: digest.finish(),
        })
    }

    /// Runs the server handshake with a client that just connected. The caller bounds it in
    /// time.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Stream, HandshakeFailure> {
        let stream = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(|e| HandshakeFailure::classify(&e))?;
        Ok(Stream::Tls(Box::new(stream.into())))
    }
}

/// `insecure = true`: every certificate is taken, but the handshake's signatures are still
/// checked, so the connection is at least encrypted to whoever holds the key presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS settings of a whole configuration, read from their files: one connector per
/// cluster with `tls`, one acceptor per listener with `tls`.
#[derive(Default)]
pub struct Material {
    pub clusters: BTreeMap<String, Arc<Connector>>,
    pub listeners: BTreeMap<String, Arc<Acceptor>>,
}

impl Material {
    /// Reads every file the configuration's `tls` keys name; the error names the key.
    pub fn load(config: &Config) -> Result<Material, String> {
        let mut material = Material::default();
        for (i, cluster) in config.clusters.iter().enumerate() {
            if let Some(tls) = &cluster.tls {
                let connector =
                    Connector::load(tls).map_err(|e| format!("clusters[{i}].tls: {e}"))?;
                material
                    .clusters
                    .insert(cluster.name.clone(), Arc::new(connector));
            }
        }
        for (i, listener) in config.listeners.iter().enumerate() {
            if let Some(tls) = &listener.tls {
                let acceptor =
                    Acceptor::load(tls).map_err(|e| format!("listeners[{i}].tls: {e}"))?;
                material
                    .listeners
                    .insert(listener.name.clone(), Arc::new(acceptor));
            }
        }
        Ok(material)
    }

    /// What an operator must hear about: clusters whose certificates go unverified.
    pub fn warnings(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter(|(_, c)| c.insecure())
            .map(|(name, _)| {
                format!("cluster {name}: tls.insecure = true: node certificates are NOT verified")
            })
            .collect()
    }
}

/// A TLS setting that a reload can swap while connections use it.
pub type Swappable<T> = Arc<arc_swap::ArcSwapOption<T>>;

/// Puts `next` in place unless it was read from the same files with the same content (so an
/// unchanged connector keeps its session cache). Returns whether anything changed.
pub fn swap<T: SameAs>(slot: &arc_swap::ArcSwapOption<T>, next: Option<Arc<T>>) -> bool {
    let current = slot.load();
    let unchanged = match (current.as_deref(), next.as_deref()) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(b),
        _ => false,
    };
    if !unchanged {
        slot.store(next);
    }
    !unchanged
}

pub trait SameAs {
    fn same_as(&self, other: &Self) -> bool;
}

impl SameAs for Connector {
    fn same_as(&self, other: &Connector) -> bool {
        self.digest == other.digest
    }
}

impl SameAs for Acceptor {
    fn same_as(&self, other: &Acceptor) -> bool {
        self.digest == other.digest
    }
}
