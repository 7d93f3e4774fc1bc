//! rustls configs from PEM files. Certificates and keys are read through rustls-pki-types'
//! `PemObject`; every error names the file it came from.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;

use crate::config::{BackendTls, TlsFiles};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config for terminating client TLS.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "cannot read a private key from {}: {e}",
            files.key.display()
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// The trust roots in a PEM file.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The system's trust roots, from the usual Debian bundle.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    load_roots(Path::new("/etc/ssl/certs/ca-certificates.crt"))
}

/// A client config and the name to verify, for TLS to a backend; `None` when TLS is off.
pub fn client_config(
    tls: &BackendTls,
    address: &str,
) -> Result<Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>, String> {
    let (roots, name) = match tls {
        BackendTls::Enabled(false) => return Ok(None),
        BackendTls::Enabled(true) => (system_roots()?, None),
        BackendTls::Custom(opts) => {
            let roots = match &opts.ca {
                Some(ca) => load_roots(ca)?,
                None => system_roots()?,
            };
            (roots, opts.server_name.clone())
        }
    };
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    let name = name.unwrap_or_else(|| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    });
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some((Arc::new(config), server_name)))
}
