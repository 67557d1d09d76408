//! The `tls` keys: a cluster's (how tether dials its nodes) and a listener's (how applications
//! reach tether). Only paths and names live here; [`crate::tls`] reads the files.

use serde::Deserialize;
use std::path::PathBuf;

/// `[[clusters]] tls = { ca_file, cert_file, key_file, server_name, insecure }`: every endpoint
/// of the cluster is dialled over TLS, health checks and discovery included.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM certificates of the authorities that sign the nodes' certificates; the system's
    /// roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain tether presents (mutual TLS); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name every node's certificate is verified against; each node's own host name or IP
    /// address when absent.
    pub server_name: Option<String>,
    /// Accept any certificate. Only for a lab: `tether check` and the log warn about it.
    #[serde(default)]
    pub insecure: bool,
}

/// `[[listeners]] tls = { cert_file, key_file, client_ca_file }`: applications connect to the
/// listener over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// PEM certificate chain the listener presents.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM certificates of the authorities whose client certificates are accepted; when set,
    /// every client must present one.
    pub client_ca_file: Option<PathBuf>,
}
