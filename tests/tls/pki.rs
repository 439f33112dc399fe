//! Test certificates: CAs, leaf certificates they sign, and a Kubernetes-style Secret
//! directory whose files are symlinks through `..data`, rotated the way the kubelet does it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A leaf certificate and its key, as PEM; `der` is the certificate as presented on the wire.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA"))
    }

    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A certificate valid for `localhost` and 127.0.0.1, as server and as client.
    pub fn leaf(&self, cn: &str) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.0).expect("signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A mounted Secret: `tls.crt`, `tls.key`, `ca.crt` are symlinks to `..data/<name>`, and
/// `..data` is a symlink to the current timestamped directory.
pub struct SecretDir {
    pub root: PathBuf,
    version: u32,
}

impl SecretDir {
    pub fn new(root: &Path, leaf: &Leaf, ca: &Ca) -> SecretDir {
        std::fs::create_dir_all(root).expect("mkdir");
        let mut s = SecretDir {
            root: root.to_path_buf(),
            version: 0,
        };
        s.rotate(leaf, ca);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).expect("link");
        }
        s
    }

    /// Write a new version and swap `..data` to it in one rename, as the kubelet does.
    pub fn rotate(&mut self, leaf: &Leaf, ca: &Ca) {
        self.version += 1;
        let dir = format!("..v{}", self.version);
        let full = self.root.join(&dir);
        std::fs::create_dir(&full).expect("mkdir");
        std::fs::write(full.join("tls.crt"), &leaf.cert_pem).expect("write");
        std::fs::write(full.join("tls.key"), &leaf.key_pem).expect("write");
        std::fs::write(full.join("ca.crt"), ca.pem()).expect("write");
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&dir, &tmp).expect("link");
        std::fs::rename(&tmp, self.root.join("..data")).expect("swap");
    }

    pub fn cert(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.root.join("tls.key")
    }

    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
}
