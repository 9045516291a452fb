use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A throwaway certificate authority for TLS tests: a self-signed CA and the server and client
/// certificates it issues, written as PEM files in a temporary directory removed on drop.
///
/// # Examples
///
/// ```
/// let ca = outbox_testkit::TestCa::new("example");
/// let server = ca.server_cert("db", &["localhost", "127.0.0.1"]);
/// assert!(std::fs::read_to_string(&server.cert).unwrap().contains("BEGIN CERTIFICATE"));
/// assert!(ca.ca_file().exists());
/// ```
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
    ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name` (its common name is `outbox test CA <name>`).
    ///
    /// # Panics
    ///
    /// When the keys cannot be made or the files cannot be written.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-ca-{}", crate::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
        let mut params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("outbox test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("CA certificate: {e}"));
        let ca_file = dir.join("ca.pem");
        write(&ca_file, &cert.pem());
        Self {
            dir,
            ca_file,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate's PEM file, for clients to trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for `names` (DNS names or IP addresses), saved as
    /// `<file_name>.pem` and `<file_name>.key`.
    ///
    /// # Panics
    ///
    /// When the certificate cannot be made or written.
    pub fn server_cert(&self, file_name: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let common_name = names
            .first()
            .cloned()
            .unwrap_or_else(|| file_name.to_owned());
        self.issue(
            file_name,
            names,
            &common_name,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose common name is `common_name` (PostgreSQL's `cert`
    /// authentication takes it as the user name), saved as `<file_name>.pem` and
    /// `<file_name>.key`.
    ///
    /// # Panics
    ///
    /// When the certificate cannot be made or written.
    pub fn client_cert(&self, file_name: &str, common_name: &str) -> CertFiles {
        self.issue(
            file_name,
            Vec::new(),
            common_name,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        file_name: &str,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> CertFiles {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("key: {e}"));
        let mut params = CertificateParams::new(names).unwrap_or_else(|e| panic!("{e}"));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("certificate {file_name}: {e}"));
        let files = CertFiles {
            cert: self.dir.join(format!("{file_name}.pem")),
            key: self.dir.join(format!("{file_name}.key")),
        };
        write(&files.cert, &cert.pem());
        write(&files.key, &key.serialize_pem());
        files
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
