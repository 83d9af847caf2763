use std::collections::BTreeMap;

use diesel::{PgConnection, RunQueryDsl};
use e2e::{RedisNamespace, TestDb};
use payd::app::App;
use payd::config::{Secret, Settings};
use payd::startup::Application;
use payproto::payment::v1 as pb;

pub const APP: &str = "shop-1";
/// Adapter tokens of the test server (test fixtures, not secrets).
pub const WECHAT_TOKEN: &str = "test-wechat-adapter-token";
pub const ALIPAY_TOKEN: &str = "test-alipay-adapter-token";

pub struct TestApp {
    /// Signs as the test app each request's `x-app-id` names (`e2e::calls::TEST_APPS`).
    pub client: e2e::calls::Client,
    pub app: App,
    pub metrics_addr: std::net::SocketAddr,
    pub grpc_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Dropped last: the server must stop before its database goes.
    pub redis: RedisNamespace,
    pub db: TestDb,
}

pub fn settings(db: &TestDb, ns: &RedisNamespace) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Secret::new(db.url.clone()),
        database_pool_size: 8,
        redis_key_prefix: ns.prefix.clone(),
        redis_url: Secret::new(e2e::redis_url()),
        adapter_tokens: Some(Secret::new(format!(
            "wechat:{WECHAT_TOKEN},alipay:{ALIPAY_TOKEN}"
        ))),
        app_credentials: Some(Secret::new(e2e::calls::test_credentials_toml())),
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::create();
    let redis = RedisNamespace::new();
    payd::storage::run_migrations(&mut db.connect()).expect("migrate");
    let mut s = settings(&db, &redis);
    tweak(&mut s);
    let application = Application::build(&s).await.expect("build app");
    let grpc_addr = application.grpc_addr().unwrap();
    let metrics_addr = application.metrics_addr().unwrap();
    let app = application.app().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = rx.await;
    }));
    let client = e2e::calls::client(format!("http://{grpc_addr}")).await;
    TestApp {
        client,
        app,
        metrics_addr,
        grpc_addr,
        stop: Some(tx),
        server: Some(server),
        redis,
        db,
    }
}

impl TestApp {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn conn(&self) -> PgConnection {
        self.db.connect()
    }

    /// Stops the server and waits for it, as SIGTERM would.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let rows: Vec<N> = diesel::sql_query(sql).load(&mut self.conn()).unwrap();
        rows[0].n
    }

    /// A fingerprint of everything the API can change, to prove a refused call changed nothing.
    pub fn snapshot(&self) -> String {
        #[derive(diesel::QueryableByName)]
        struct S {
            #[diesel(sql_type = diesel::sql_types::Text)]
            s: String,
        }
        let rows: Vec<S> = diesel::sql_query(
            "SELECT concat_ws('|', \
               (SELECT coalesce(string_agg(o::text, ',' ORDER BY id), '') FROM orders o), \
               (SELECT coalesce(string_agg(t::text, ',' ORDER BY order_id, version), '') FROM order_transitions t), \
               (SELECT coalesce(string_agg(k::text, ',' ORDER BY app_id, idem_key), '') FROM idempotency_keys k)) AS s",
        )
        .load(&mut self.conn())
        .unwrap();
        rows[0].s.clone()
    }

    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// A request carrying the app id.
pub fn req<T>(body: T) -> tonic::Request<T> {
    req_as(APP, body)
}

pub fn req_as<T>(app: &str, body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut().insert("x-app-id", app.parse().unwrap());
    r
}

pub fn create(no: &str, amount: i64) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        merchant_order_no: no.to_owned(),
        amount: Some(pb::Money {
            amount_minor: amount,
            currency: "CNY".to_owned(),
        }),
        subject: "Flat white".to_owned(),
        expires_in_seconds: 900,
        metadata: BTreeMap::from([("table".to_owned(), "7".to_owned())]),
        idempotency_key: String::new(),
    }
}

pub async fn create_order(app: &mut TestApp, no: &str, amount: i64) -> pb::Order {
    app.client
        .create_order(req(create(no, amount)))
        .await
        .expect("create order")
        .into_inner()
        .order
        .expect("order")
}

/// An AuditService client on the test server, signing as the test apps.
pub async fn audit_client(app: &TestApp) -> e2e::calls::AuditClient {
    e2e::calls::audit_client(app.endpoint()).await
}
