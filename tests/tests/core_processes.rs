//! Real `payd` processes against a real Postgres and Redis: replicas racing, signals, crashes,
//! and the discovery services an operator's tools rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use diesel::RunQueryDsl;
use e2e::{Payd, RedisNamespace, TestDb};
use payproto::payment::v1 as pb;
use tonic::transport::Channel;

fn req<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut()
        .insert("x-app-id", "shop-1".parse().unwrap());
    r
}

fn create(no: &str, amount: i64, key: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        merchant_order_no: no.to_owned(),
        amount: Some(pb::Money {
            amount_minor: amount,
            currency: "CNY".into(),
        }),
        subject: "Season ticket".into(),
        expires_in_seconds: 600,
        metadata: BTreeMap::new(),
        idempotency_key: key.to_owned(),
    }
}

async fn client(p: &Payd) -> e2e::calls::Client {
    e2e::calls::client(p.endpoint()).await
}

fn count(db: &TestDb, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let rows: Vec<N> = diesel::sql_query(sql).load(&mut db.connect()).unwrap();
    rows[0].n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_creates_over_three_replicas_make_one_order_and_one_answer() {
    let db = TestDb::create();
    let ns = RedisNamespace::new();
    // Three replicas start together and migrate the empty database together.
    let (a, b, c) = std::thread::scope(|s| {
        let a = s.spawn(|| Payd::start(&db, &ns, &[]));
        let b = s.spawn(|| Payd::start(&db, &ns, &[]));
        let c = s.spawn(|| Payd::start(&db, &ns, &[]));
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    let clients = [client(&a).await, client(&b).await, client(&c).await];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut cl = clients[i % 3].clone();
        // A third of the callers also send an idempotency key of their own.
        let key = if i % 3 == 0 {
            format!("caller-{i}")
        } else {
            String::new()
        };
        tasks.push(tokio::spawn(async move {
            cl.create_order(req(create("RACE-000001", 4200, &key)))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap().expect("every caller succeeds"));
    }
    assert_eq!(replies.len(), 200);
    assert!(replies.windows(2).all(|w| w[0] == w[1]), "answers differ");
    assert_eq!(count(&db, "SELECT count(*) AS n FROM orders"), 1);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM order_transitions"), 1);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM idempotency_keys"), 67);
}

/// SIGTERM lands while a Pay is provably in flight (its Prepay reached the WeChat sandbox, which
/// answers 1.5 s late): that call must still complete with OK and be stored, alongside a burst of
/// CreateOrders, and payd exits 0. A payd that dropped in-flight calls fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_calls_and_exits_zero() {
    use e2e::calls;
    use e2e::platform::{Platform, SandboxedChannel};
    use serde_json::json;

    let p = Platform::start_channels(&[SandboxedChannel::Wechat], 0.01);
    // A replica of its own, so this test can signal it without taking down the platform's.
    let payd = p.spawn_payd();
    let mut cl = calls::client(payd.endpoint()).await;
    let order = calls::create(&mut cl, "TERM-PAY-0001", 4200).await;
    p.sandbox_post(
        SandboxedChannel::Wechat,
        "/sandbox/faults",
        json!({"api_delay_ms": 1_500}),
    )
    .await;
    let held = {
        let (mut c, id) = (cl.clone(), order.order_id.clone());
        tokio::spawn(async move { calls::pay(&mut c, &id, SandboxedChannel::Wechat).await })
    };
    // The sandbox executes a call before its delayed answer: once the trade exists there, the
    // Prepay is in flight and its answer is still ≥ 1 s away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p
        .sandbox_get(SandboxedChannel::Wechat, "/sandbox/trades")
        .await
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the Prepay never reached the sandbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut burst = Vec::new();
    for i in 0..100 {
        let mut c = cl.clone();
        burst.push(tokio::spawn(async move {
            c.create_order(req(create(&format!("TERM-{i:06}"), 100 + i, "")))
                .await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !held.is_finished(),
        "the Pay answered before the signal; the test proves nothing"
    );
    let status = tokio::task::spawn_blocking(move || payd.terminate())
        .await
        .unwrap();
    assert!(status.success(), "payd exited with {status:?}");

    let paid = held
        .await
        .unwrap()
        .expect("the Pay in flight when SIGTERM landed completes");
    assert!(!paid.pay_params.is_empty(), "{paid:?}");
    let attempt = paid.attempt.unwrap();
    assert_eq!(
        calls::count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM payment_attempts WHERE out_trade_no = '{}' AND status = 'PAYING'",
                attempt.out_trade_no
            )
        ),
        1,
        "the in-flight Pay's attempt is stored as PAYING"
    );
    assert_eq!(
        calls::count(
            &p,
            &format!(
                "SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAYING'",
                order.order_id
            )
        ),
        1
    );
    // Every CreateOrder either completed (and is durable) or was never accepted.
    let mut acknowledged = Vec::new();
    for t in burst {
        match t.await.unwrap() {
            Ok(r) => acknowledged.push(r.into_inner().order.unwrap()),
            Err(s) => assert!(
                matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                ),
                "{s:?}"
            ),
        }
    }
    for o in acknowledged {
        assert_eq!(
            calls::count(
                &p,
                &format!(
                    "SELECT count(*) AS n FROM orders WHERE id = '{}'",
                    o.order_id
                )
            ),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_payd_restarts_with_everything_it_acknowledged() {
    let db = TestDb::create();
    let ns = RedisNamespace::new();
    let p = Payd::start(&db, &ns, &[]);
    let (grpc, metrics) = (p.grpc, p.metrics);
    let mut cl = client(&p).await;
    let mut orders = Vec::new();
    for i in 0..20 {
        orders.push(
            cl.create_order(req(create(&format!("CRASH-{i:05}"), 10 + i, "")))
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap(),
        );
    }
    let closed = cl
        .close_order(req(pb::CloseOrderRequest {
            order_id: orders[0].order_id.clone(),
            idempotency_key: "close-after-crash".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    p.kill();

    let p = Payd::start_on(&db, &ns, grpc, metrics, &[]);
    let mut cl = client(&p).await;
    orders[0] = closed.order.clone().unwrap();
    for o in &orders {
        let got = cl
            .get_order(req(pb::GetOrderRequest {
                lookup: Some(pb::get_order_request::Lookup::OrderId(o.order_id.clone())),
            }))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(&got, o);
    }
    // The idempotency key survived the crash too.
    let replay = cl
        .close_order(req(pb::CloseOrderRequest {
            order_id: orders[0].order_id.clone(),
            idempotency_key: "close-after-crash".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, closed);
}

#[tokio::test]
async fn health_and_both_reflection_versions_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let db = TestDb::create();
    let ns = RedisNamespace::new();
    let p = Payd::start(&db, &ns, &[]);
    let channel = Channel::from_shared(p.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "payment.v1.PaymentService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
            panic!("unexpected {resp:?}")
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"payment.v1.PaymentService".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_owned()),
            "{names:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "payment.v1.PaymentService".into(),
            )),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(resp.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{resp:?}"
        );
    }
    // Prometheus text on /metrics.
    let body = http_get(p.metrics, "/metrics").await;
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "{body}"
    );
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
