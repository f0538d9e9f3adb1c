//! TLS files for fixtures that serve TLS (etcd, the Consul fake): a CA and
//! certificates signed by it, generated with rcgen.

use std::path::{Path, PathBuf};

/// Generated TLS files (PEM): a CA, a server certificate for 127.0.0.1
/// and localhost, and a client certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed both certificates: the client's trust root.
    pub ca_file: PathBuf,
    /// The server's certificate, for 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (CN `changeover-test-client`) etcd accepts.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generate them into `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, text: String| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };
        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "changeover test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let ca_file = write("ca.pem", ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |cn: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("generate a key");
            let mut params = CertificateParams::new(sans).expect("certificate parameters");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
            (cert.pem(), key.serialize_pem())
        };
        // etcd's JSON gateway dials etcd's own gRPC port presenting the
        // server certificate, which --client-cert-auth checks: it must be
        // good for client auth too.
        let (server_pem, server_key_pem) = leaf(
            "127.0.0.1",
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_pem, client_key_pem) = leaf(
            "changeover-test-client",
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        TlsFiles {
            ca_file,
            server_cert: write("server.pem", server_pem),
            server_key: write("server-key.pem", server_key_pem),
            client_cert: write("client.pem", client_pem),
            client_key: write("client-key.pem", client_key_pem),
        }
    }
}
