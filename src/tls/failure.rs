//! Why a TLS handshake failed, in the words an operator needs: the log, `/status` and the
//! connect-failure metric name the cause rather than rustls' error variant.

use rustls::{AlertDescription, CertificateError, Error};
use std::fmt;
use std::io;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's certificate is not signed by an authority tether trusts.
    UnknownCa(String),
    /// The certificate does not name the host (or `server_name`).
    NameMismatch(String),
    /// The certificate has expired or is not valid yet.
    Expired(String),
    /// What came back is not TLS: a plaintext port given as TLS.
    NotTls(String),
    /// The peer refused the handshake with an alert (it wants a client certificate, or does
    /// not trust ours).
    Refused(String),
    /// The connection dropped during the handshake.
    Dropped(String),
    Other(String),
}

impl HandshakeFailure {
    pub fn classify(error: &io::Error) -> HandshakeFailure {
        let detail = error.to_string();
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
            return match error.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => HandshakeFailure::Dropped(detail),
                _ => HandshakeFailure::Other(detail),
            };
        };
        match tls {
            Error::InvalidCertificate(certificate) => match certificate {
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::UnknownRevocationStatus => HandshakeFailure::UnknownCa(detail),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    HandshakeFailure::NameMismatch(detail)
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => HandshakeFailure::Expired(detail),
                _ => HandshakeFailure::Other(detail),
            },
            Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
                HandshakeFailure::NotTls(detail)
            }
            Error::AlertReceived(AlertDescription::UnknownCA) => HandshakeFailure::Refused(
                format!("{detail} (the peer does not trust tether's certificate)"),
            ),
            Error::AlertReceived(
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
            ) => HandshakeFailure::Refused(format!(
                "{detail} (does the peer want a client certificate?)"
            )),
            Error::AlertReceived(_) => HandshakeFailure::Refused(detail),
            _ => HandshakeFailure::Other(detail),
        }
    }

    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa(_) => "unknown_ca",
            HandshakeFailure::NameMismatch(_) => "name_mismatch",
            HandshakeFailure::Expired(_) => "expired",
            HandshakeFailure::NotTls(_) => "not_tls",
            HandshakeFailure::Refused(_) => "refused",
            HandshakeFailure::Dropped(_) => "dropped",
            HandshakeFailure::Other(_) => "other",
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::UnknownCa(d) => write!(f, "TLS: unknown CA: {d}"),
            HandshakeFailure::NameMismatch(d) => write!(f, "TLS: name mismatch: {d}"),
            HandshakeFailure::Expired(d) => {
                write!(f, "TLS: certificate expired or not yet valid: {d}")
            }
            HandshakeFailure::NotTls(d) => write!(f, "TLS: the peer is not speaking TLS: {d}"),
            HandshakeFailure::Refused(d) => write!(f, "TLS: the peer refused the handshake: {d}"),
            HandshakeFailure::Dropped(d) => {
                write!(
                    f,
                    "TLS: the connection dropped during the handshake (is the peer speaking TLS?): {d}"
                )
            }
            HandshakeFailure::Other(d) => write!(f, "TLS: handshake failed: {d}"),
        }
    }
}

impl std::error::Error for HandshakeFailure {}
