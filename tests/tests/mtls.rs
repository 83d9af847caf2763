//! Mutual TLS on both gRPC contracts, with the real binaries: payd serves `payment.v1` and
//! `ChannelEvents` over TLS and demands a client certificate of the deployment's CA; the WeChat
//! adapter does the same on its `ChannelAdapter` port, and each side calls the other with its
//! own certificate. A payment goes through end to end; a client without a certificate, with one
//! from another CA, or speaking plain HTTP/2 is refused at the handshake and changes nothing.
//! The certificates are generated here (rcgen), never committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::calls::{Client, count, create, pay, req, wait_status};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::auth::Signed;
use payproto::payment::v1 as pb;
use payproto::payment::v1::payment_service_client::PaymentServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA and, under it, one certificate for 127.0.0.1 used by every process both as a server
/// and as a client (a real deployment gives each its own; one is enough to prove the wiring).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, dir: &Path, name: &str) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("payplatform-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Self::ca("payplatform test CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self::leaf(&ca, &dir, "node");
        // A second CA nobody trusts, and a certificate it issued.
        let rogue = Self::ca("rogue CA");
        Self::leaf(&rogue, &dir, "rogue");
        Self { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(f)).unwrap()
    }

    fn client_tls(&self, cert: Option<&str>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read("ca.pem")));
        match cert {
            Some(name) => tls.identity(Identity::from_pem(
                self.read(&format!("{name}.pem")),
                self.read(&format!("{name}.key")),
            )),
            None => tls,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect(endpoint: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).unwrap();
    }
    ep.connect().await.map_err(|e| format!("{e:?}"))
}

fn signed(channel: Channel) -> Client {
    PaymentServiceClient::new(Signed::new(channel, e2e::calls::test_signing_keys()))
}

fn order_request(no: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        merchant_order_no: no.into(),
        amount: Some(pb::Money {
            amount_minor: 1,
            currency: "CNY".into(),
        }),
        subject: "refused".into(),
        expires_in_seconds: 900,
        metadata: BTreeMap::new(),
        idempotency_key: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_goes_through_with_mutual_tls_on_both_contracts_and_no_certificate_gets_nowhere()
{
    let pki = Pki::new();
    let ch = SandboxedChannel::Wechat;
    let files = |prefix: &str, ca_var: &str| {
        vec![
            (format!("{prefix}CERT_FILE"), pki.path("node.pem")),
            (format!("{prefix}KEY_FILE"), pki.path("node.key")),
            (format!("{prefix}{ca_var}"), pki.path("ca.pem")),
        ]
    };
    let mut payd_env = files("PAYD_TLS_", "CLIENT_CA_FILE");
    payd_env.extend(files("PAYD_CHANNEL_TLS_", "CA_FILE"));
    let mut adapter_env: Vec<(SandboxedChannel, String, String)> = Vec::new();
    for (k, v) in files("ADAPTER_TLS_", "CLIENT_CA_FILE")
        .into_iter()
        .chain(files("ADAPTER_CORE_TLS_", "CA_FILE"))
    {
        adapter_env.push((ch, k, v));
    }
    let p = Platform::start_with(
        &[ch],
        1.0,
        PlatformOptions {
            payd_env,
            adapter_env,
        },
    );
    let endpoint = p.payd.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // With the deployment's certificate: a whole payment, payd → adapter and adapter → payd
    // both over mutual TLS.
    let mut c = signed(
        connect(&endpoint, Some(pki.client_tls(Some("node"))))
            .await
            .expect("a client with a certificate of the CA connects"),
    );
    let order = create(&mut c, "MTLS-0001", 1234).await;
    let paying = pay(&mut c, &order.order_id, ch)
        .await
        .expect("Pay reaches the adapter over mutual TLS");
    assert_eq!(p.payer_pays(ch, &paying, "success").await, 200);
    // The callback is forwarded to payd's ChannelEvents over mutual TLS.
    wait_status(
        &mut c,
        &order.order_id,
        pb::OrderStatus::Paid,
        Duration::from_secs(30),
    )
    .await;

    // Without a client certificate, with one from another CA, or in plain text: no connection
    // (or no call), and nothing is created.
    let before = count(&p, "SELECT count(*) AS n FROM orders");
    let attempts: Vec<(&str, Option<ClientTlsConfig>)> = vec![
        ("no client certificate", Some(pki.client_tls(None))),
        (
            "a certificate of another CA",
            Some(pki.client_tls(Some("rogue"))),
        ),
    ];
    for (what, tls) in attempts {
        match connect(&endpoint, tls).await {
            Err(_) => {}
            Ok(channel) => {
                let e = signed(channel)
                    .create_order(req(order_request("MTLS-0002")))
                    .await
                    .expect_err(what);
                // TLS 1.3 finishes the client's side of the handshake before the server
                // has checked its certificate: the refusal arrives as the connection closing.
                assert_ne!(e.code(), tonic::Code::Ok, "{what}: {e:?}");
            }
        }
    }
    let plain = endpoint.replace("https://", "http://");
    if let Ok(channel) = connect(&plain, None).await {
        let e = signed(channel)
            .create_order(req(order_request("MTLS-0003")))
            .await
            .expect_err("plain HTTP/2 to a TLS port");
        assert_ne!(e.code(), tonic::Code::Ok);
    }
    assert_eq!(count(&p, "SELECT count(*) AS n FROM orders"), before);

    // The adapter's ChannelAdapter port refuses a caller without a certificate as well.
    let adapter = format!("https://{}", p.adapter_addrs[&ch].grpc);
    let refused = match connect(&adapter, Some(pki.client_tls(None))).await {
        Err(_) => true,
        Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "the adapter served a client without a certificate");
}
