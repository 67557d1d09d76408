//! Certificates a test makes for itself (rcgen), for the faults the lab's own certificates do
//! not have: a CA tether does not trust, a certificate for another name, an expired one. And
//! socat, a real TLS server, to present them in front of a lab node.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    date_time_ymd,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A CA of the test's own, and the files of what it signed, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        // Each CA and certificate gets a name of its own: OpenSSL takes a certificate whose
        // issuer and subject names match (rcgen's default for both) for a self-signed one.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let serial = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tether test CA {serial}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), certificate.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` valid from 2000 until the start of `until`, as
    /// `FILE.pem`/`FILE.key` in the directory.
    pub fn issue(&self, file: &str, names: &[&str], until: i32) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(until, 1, 1);
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let (cert, key_file) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}.key")),
        );
        std::fs::write(&cert, certificate.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert, key_file)
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The PEM files `parts` concatenated into `name`.
    pub fn bundle(&self, name: &str, parts: &[&Path]) -> PathBuf {
        let text: String = parts
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// socat terminating TLS on `port` with `cert`/`key` and forwarding to `to`; killed on drop.
pub struct TlsFront {
    child: Child,
}

impl TlsFront {
    pub fn start(port: u16, cert: &Path, key: &Path, to: &str) -> TlsFront {
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:{to}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/install-deps installs it)");
        // socat listens within milliseconds; a connect proves it.
        super::wait_for(
            "socat to listen",
            std::time::Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        TlsFront { child }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
