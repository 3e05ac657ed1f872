//! The rustls client configuration for `rediss://`: the system's roots plus an
//! optional private CA, so a managed Redis and a self-signed one both verify.

use fred::prelude::TlsConnector;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::RedisError;

/// A connector trusting the system's roots and every certificate in `ca_pem`.
pub(crate) fn connector(ca_pem: Option<&[u8]>) -> Result<TlsConnector, RedisError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system stores are not fatal when a CA is given: that CA may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RedisError::InvalidConfig(format!("the CA certificate is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(RedisError::InvalidConfig(
                "the CA file holds no certificate".into(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| RedisError::InvalidConfig(format!("unusable CA certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(RedisError::InvalidConfig(
            "no trusted root certificates: the system store is empty and no CA file was given".into(),
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RedisError::InvalidConfig(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config))
}
