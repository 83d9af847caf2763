use payd::app::ServiceError;
use payd::domain::{AppId, OrderEvent, OrderId, OrderStatus};
use payproto::payment::v1 as pb;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn create_get_list_and_close_an_order() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "ORDER-0001", 8888).await;
    assert_eq!(order.status, pb::OrderStatus::Pending as i32);
    assert_eq!(order.amount.as_ref().unwrap().amount_minor, 8888);
    assert_eq!(order.amount.as_ref().unwrap().currency, "CNY");
    assert_eq!(order.app_id, APP);
    assert_eq!(order.version, 0);
    let expires = order.expires_at.unwrap().seconds - order.created_at.unwrap().seconds;
    assert_eq!(expires, 900);

    let by_id = app
        .client
        .get_order(req(pb::GetOrderRequest {
            lookup: Some(pb::get_order_request::Lookup::OrderId(
                order.order_id.clone(),
            )),
        }))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(by_id, order);
    let by_no = app
        .client
        .get_order(req(pb::GetOrderRequest {
            lookup: Some(pb::get_order_request::Lookup::MerchantOrderNo(
                "ORDER-0001".into(),
            )),
        }))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(by_no, order);

    let closed = app
        .client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(closed.status, pb::OrderStatus::Closed as i32);
    assert_eq!(closed.version, 1);
    assert!(closed.closed_at.is_some());
    assert_eq!(
        app.count("SELECT count(*) AS n FROM order_transitions"),
        2,
        "created and closed"
    );
}

#[tokio::test]
async fn closing_a_closed_order_is_refused_naming_the_state() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "ORDER-0002", 100).await;
    let close = || pb::CloseOrderRequest {
        order_id: order.order_id.clone(),
        idempotency_key: String::new(),
    };
    app.client.close_order(req(close())).await.unwrap();
    let before = app.snapshot();
    let err = app.client.close_order(req(close())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("CLOSED"), "{}", err.message());
    assert_eq!(app.snapshot(), before);
}

#[tokio::test]
async fn a_resubmitted_order_returns_the_first_and_a_different_one_is_refused() {
    let mut app = spawn_app().await;
    let first = create_order(&mut app, "ORDER-0003", 500).await;
    let again = create_order(&mut app, "ORDER-0003", 500).await;
    assert_eq!(first, again);
    let err = app
        .client
        .create_order(req(create("ORDER-0003", 501)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("amount"), "{}", err.message());
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 1);
}

#[tokio::test]
async fn orders_are_scoped_to_their_app() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "ORDER-0004", 100).await;
    let err = app
        .client
        .get_order(req_as(
            "other-app",
            pb::GetOrderRequest {
                lookup: Some(pb::get_order_request::Lookup::OrderId(
                    order.order_id.clone(),
                )),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The same merchant_order_no is free for another app.
    let other = app
        .client
        .create_order(req_as("other-app", create("ORDER-0004", 100)))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_ne!(other.order_id, order.order_id);
}

#[tokio::test]
async fn list_orders_filters_by_status_and_time_and_pages_without_gaps() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            create_order(&mut app, &format!("LIST-{i:04}"), 100 + i)
                .await
                .order_id,
        );
    }
    for id in &ids[..3] {
        app.client
            .close_order(req(pb::CloseOrderRequest {
                order_id: id.clone(),
                idempotency_key: String::new(),
            }))
            .await
            .unwrap();
    }
    // Page through everything, 3 at a time: newest first, each order exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_orders(req(pb::ListOrdersRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.orders.iter().map(|o| o.order_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let closed = app
        .client
        .list_orders(req(pb::ListOrdersRequest {
            statuses: vec![pb::OrderStatus::Closed as i32],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.orders.len(), 3);
    assert!(
        closed
            .orders
            .iter()
            .all(|o| o.status == pb::OrderStatus::Closed as i32)
    );

    let future = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    let none = app
        .client
        .list_orders(req(pb::ListOrdersRequest {
            created_from: Some(future),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(none.orders.is_empty());
    let all_before = app
        .client
        .list_orders(req(pb::ListOrdersRequest {
            created_to: Some(future),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all_before.orders.len(), 7);
}

/// Drives an order to `target` through legal events, as the holder of its lock.
async fn drive_to(app: &TestApp, id: OrderId, target: OrderStatus) {
    let path: &[OrderEvent] = match target {
        OrderStatus::Pending => &[],
        OrderStatus::Paying => &[OrderEvent::PaymentStarted],
        OrderStatus::Paid => &[OrderEvent::PaymentSucceeded],
        OrderStatus::PartiallyRefunded => &[
            OrderEvent::PaymentSucceeded,
            OrderEvent::RefundSucceeded { fully: false },
        ],
        OrderStatus::Refunded => &[
            OrderEvent::PaymentSucceeded,
            OrderEvent::RefundSucceeded { fully: true },
        ],
        OrderStatus::Closed => &[OrderEvent::Closed],
    };
    for e in path {
        let g = app.app.lock_order(id).await.unwrap();
        app.app
            .apply_event(AppId::parse("t", APP).unwrap(), id, *e, "test", &g, None)
            .await
            .unwrap();
        app.app.unlock(g).await;
    }
}

#[tokio::test]
async fn every_transition_the_state_machine_refuses_is_refused_in_postgres_and_changes_nothing() {
    let mut app = spawn_app().await;
    let events = [
        OrderEvent::PaymentStarted,
        OrderEvent::PaymentAbandoned,
        OrderEvent::PaymentSucceeded,
        OrderEvent::Closed,
        OrderEvent::RefundSucceeded { fully: false },
        OrderEvent::RefundSucceeded { fully: true },
    ];
    let mut refused = 0;
    for (i, state) in OrderStatus::ALL.into_iter().enumerate() {
        let order = create_order(&mut app, &format!("REFUSE-{i:04}"), 1000).await;
        let id: OrderId = order.order_id.parse().unwrap();
        drive_to(&app, id, state).await;
        for event in events {
            if state.apply(event).is_ok() {
                continue;
            }
            let before = app.snapshot();
            let g = app.app.lock_order(id).await.unwrap();
            let r = app
                .app
                .apply_event(AppId::parse("t", APP).unwrap(), id, event, "test", &g, None)
                .await;
            app.app.unlock(g).await;
            match r {
                Err(ServiceError::IllegalTransition(t)) => assert_eq!(t.from, state),
                other => panic!("{state} + {event}: {other:?}"),
            }
            assert_eq!(
                app.snapshot(),
                before,
                "{state} + {event} changed something"
            );
            refused += 1;
        }
        // Through the API too: CloseOrder is refused wherever the machine refuses closing.
        if state.apply(OrderEvent::Closed).is_err() {
            let err = app
                .client
                .close_order(req(pb::CloseOrderRequest {
                    order_id: order.order_id.clone(),
                    idempotency_key: String::new(),
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert!(err.message().contains(state.as_str()), "{}", err.message());
        }
    }
    assert_eq!(refused, 6 * 6 - 12);
}

#[tokio::test]
async fn a_restarted_server_keeps_every_order() {
    let mut app = spawn_app().await;
    let a = create_order(&mut app, "KEEP-0001", 100).await;
    let b = create_order(&mut app, "KEEP-0002", 200).await;
    app.stop().await;

    // A new server on the same database and Redis prefix.
    let s = settings(&app.db, &app.redis);
    let application = payd::startup::Application::build(&s).await.unwrap();
    let addr = application.grpc_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        let _ = rx.await;
    }));
    let mut client = e2e::calls::client(format!("http://{addr}")).await;
    for o in [&a, &b] {
        let got = client
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
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn closing_an_order_takes_and_releases_its_lock() {
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "LOCK-0001", 100).await;
    app.client
        .close_order(req(pb::CloseOrderRequest {
            order_id: order.order_id.clone(),
            idempotency_key: String::new(),
        }))
        .await
        .unwrap();
    let keys = app.redis.keys();
    assert!(
        !keys.iter().any(|k| k.contains(":lock:")),
        "lock left behind: {keys:?}"
    );
    // The close was written with a fencing token minted by Postgres (no counter in Redis).
    assert!(
        !keys.iter().any(|k| k.contains(":fence:")),
        "fence counter in Redis: {keys:?}"
    );
    let fence: i64 = {
        use diesel::prelude::*;
        payd::storage::schema::orders::table
            .select(payd::storage::schema::orders::fence)
            .first(&mut app.conn())
            .unwrap()
    };
    assert!(fence > 0, "the close carried no fence");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("payd_lock_acquisitions_total{outcome=\"acquired\"} 1"),
        "{metrics}"
    );
    assert!(matches!(
        app.app.get_order(AppId::parse("t", APP).unwrap(), order.order_id.parse().unwrap()).await,
        Ok(row) if row.status == OrderStatus::Closed
    ));
}

/// `created_at` (the list cursor) and `expires_at` never stray from the database's clock: the
/// single-statement CreateOrder takes this replica's clock only within a second of the
/// database's (`statement_timestamp()`, the same instant the transition row records), and the
/// expiry is exactly the order's own time plus its lifetime.
#[tokio::test]
async fn an_order_is_stamped_within_a_second_of_the_database_clock() {
    let mut app = spawn_app().await;
    create_order(&mut app, "DBCLOCK-0001", 100).await;
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM orders o JOIN order_transitions t ON t.order_id = o.id \
             WHERE t.version = 0 AND abs(extract(epoch FROM o.created_at - t.created_at)) < 1 \
             AND o.expires_at = o.created_at + interval '900 seconds'"
        ),
        1
    );
}

/// A replica whose clock is more than a second off the database's gets no order from the
/// single statement: nothing is written, and CreateOrder's transaction (the database's clock)
/// makes the order instead.
#[tokio::test]
async fn a_replica_clock_off_by_more_than_a_second_writes_nothing_in_one_statement() {
    use payd::storage::orders::NewOrderRow;
    use payd::storage::steps::{CreateWrite, create_order};
    let app = spawn_app().await;
    let mut conn = app.conn();
    let row = NewOrderRow {
        id: uuid::Uuid::new_v4(),
        app_id: APP,
        merchant_order_no: "SKEW-0001",
        amount_minor: 100,
        currency: "CNY",
        subject: "s",
        metadata: serde_json::json!({}),
        status: payd::domain::OrderStatus::Pending,
    };
    for off in [-5_i64, 5] {
        let at = payd::storage::steps::stored_instant(
            chrono::Utc::now() + chrono::Duration::seconds(off),
        );
        let w = CreateWrite {
            order: &row,
            at,
            expires_at: at + chrono::Duration::seconds(900),
            max_skew: std::time::Duration::from_secs(1),
            event_id: uuid::Uuid::now_v7(),
            event_type: "order.created",
            payload: b"p",
            audit: None,
        };
        assert_eq!(create_order(&mut conn, &w).unwrap(), None, "off by {off} s");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM orders"), 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM outbox_events"), 0);
    // The same write from a clock in step makes the order and its event.
    let at = payd::storage::steps::stored_instant(chrono::Utc::now());
    let w = CreateWrite {
        order: &row,
        at,
        expires_at: at + chrono::Duration::seconds(900),
        max_skew: std::time::Duration::from_secs(1),
        event_id: uuid::Uuid::now_v7(),
        event_type: "order.created",
        payload: b"p",
        audit: None,
    };
    let stored = create_order(&mut conn, &w).unwrap().expect("created");
    assert_eq!((stored.created_at, stored.expires_at), (at, w.expires_at));
    assert_eq!(
        app.count("SELECT count(*) AS n FROM outbox_events WHERE order_seq = 1"),
        1
    );
}

/// The database records every transition itself (trigger `orders_record_transition`): an
/// UPDATE that moves an order's version without naming a reason is refused, one that names it
/// leaves exactly one `order_transitions` row, and the reason column is empty at rest.
#[tokio::test]
async fn the_database_records_each_transition_and_refuses_one_without_a_reason() {
    use diesel::RunQueryDsl;
    let mut app = spawn_app().await;
    let order = create_order(&mut app, "TRIGGER-01", 100).await;
    let id = &order.order_id;
    let rows = |app: &TestApp| {
        app.count(&format!(
            "SELECT count(*) AS n FROM order_transitions WHERE order_id = '{id}'"
        ))
    };
    assert_eq!(rows(&app), 1, "the creation is recorded");
    let mut conn = app.conn();
    let bare = diesel::sql_query(format!(
        "UPDATE orders SET status = 'CLOSED', version = version + 1 WHERE id = '{id}'"
    ))
    .execute(&mut conn);
    assert!(
        bare.is_err(),
        "a version change without a reason was accepted"
    );
    assert_eq!(rows(&app), 1);
    diesel::sql_query(format!(
        "UPDATE orders SET status = 'CLOSED', version = version + 1, transition_reason = 'by hand' \
         WHERE id = '{id}'"
    ))
    .execute(&mut conn)
    .unwrap();
    assert_eq!(rows(&app), 2);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM order_transitions t JOIN orders o ON o.id = t.order_id \
             WHERE t.order_id = '{id}' AND t.version = o.version AND t.from_status = 'PENDING' \
             AND t.to_status = 'CLOSED' AND t.reason = 'by hand'"
        )),
        1
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM orders WHERE transition_reason IS NOT NULL"),
        0
    );
}
