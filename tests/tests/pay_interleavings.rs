//! Randomized interleavings of Pay, CloseOrder and the payer, over three payd replicas with a
//! short lock TTL, replicas paused past it, and Prepay answers delayed at the sandboxes. After
//! the storm, checked against the sandboxes' own ledgers:
//! - at most one successful charge per order that is not a recorded duplicate payment;
//! - every successful charge is known to the core (its attempt SUCCEEDED);
//! - no caller ever received parameters for an order that was at that moment CLOSED or PAID
//!   (each OK reply names the order version it was given in, and that version was PAYING).
//!
//! The seed is printed; `INTERLEAVE_SEED=<n>` replays a run's choices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::RunQueryDsl;
use e2e::calls::{self, close, create, pay};
use e2e::platform::{Platform, PlatformOptions, SandboxedChannel};
use payproto::payment::v1 as pb;
use serde_json::json;

/// xorshift64*: enough randomness for choosing actions, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One Pay that answered OK: what the caller was handed, and the order version it was given in.
#[derive(Debug, Clone)]
struct Handed {
    order_id: String,
    out_trade_no: String,
    version: i64,
    status: i32,
}

const ORDERS: usize = 200;
const CONCURRENCY: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_pays_closes_and_payers_over_three_replicas_never_charge_twice() {
    let seed = std::env::var("INTERLEAVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::try_from(uuid::Uuid::new_v4().as_u128() >> 64).unwrap() | 1);
    eprintln!("INTERLEAVE_SEED={seed}");
    let opts = PlatformOptions {
        payd_env: [
            ("PAYD_LOCK_TTL_MS", "300"),
            ("PAYD_LOCK_WAIT_MS", "3000"),
            ("PAYD_PAY_WINDOW_ALIPAY_SECS", "3"),
            ("PAYD_PAY_WINDOW_UNIONPAY_SECS", "3"),
            ("PAYD_PAY_DEADLINE_MARGIN_MS", "300"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
        adapter_env: vec![(
            SandboxedChannel::Unionpay,
            "UNIONPAY_FRONT_REGISTER".into(),
            "false".into(),
        )],
    };
    let p = Arc::new(Platform::start_with(&SandboxedChannel::ALL, 0.01, opts));
    let replicas = [p.spawn_payd(), p.spawn_payd()];
    let endpoints = [
        p.payd.endpoint(),
        replicas[0].endpoint(),
        replicas[1].endpoint(),
    ];
    let mut clients = Vec::new();
    for e in &endpoints {
        clients.push(calls::client(e.clone()).await);
    }

    // Faults in the background: Prepay answers delayed at a random sandbox, and a random
    // replica paused past its lock TTL now and then.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chaos = {
        let p = p.clone();
        let stop = stop.clone();
        let pids: Vec<u32> = std::iter::once(p.payd.child.id())
            .chain(replicas.iter().map(|r| r.child.id()))
            .collect();
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        tokio::spawn(async move {
            let mut pauses = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let ch = SandboxedChannel::ALL[usize::try_from(rng.below(3)).unwrap()];
                let delay = [0, 0, 150, 400][usize::try_from(rng.below(4)).unwrap()];
                p.sandbox_post(ch, "/sandbox/faults", json!({ "api_delay_ms": delay }))
                    .await;
                if rng.below(3) == 0 {
                    let pid = nix::unistd::Pid::from_raw(
                        i32::try_from(pids[usize::try_from(rng.below(3)).unwrap()]).unwrap(),
                    );
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                    pauses += 1;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            for ch in SandboxedChannel::ALL {
                p.sandbox_post(ch, "/sandbox/faults", json!({ "api_delay_ms": 0 }))
                    .await;
            }
            pauses
        })
    };

    let handed: Arc<Mutex<Vec<Handed>>> = Arc::default();
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for n in 0..ORDERS {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let p = p.clone();
        let mut clients = clients.clone();
        let handed = handed.clone();
        let mut rng = Rng(seed.wrapping_add(u64::try_from(n).unwrap() * 0x1000_0000_01b3) | 1);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let c0 = &mut clients[0];
            let order = create(c0, &format!("MIX-{n:05}"), 100 + i64::try_from(n).unwrap()).await;
            // What this order's payer holds: parameters they were handed, by channel.
            let mut wallet: Vec<(SandboxedChannel, pb::PayResponse)> = Vec::new();
            for _ in 0..(3 + rng.below(4)) {
                let c = &mut clients[usize::try_from(rng.below(3)).unwrap()];
                match rng.below(10) {
                    0..=4 => {
                        let ch = SandboxedChannel::ALL[usize::try_from(rng.below(3)).unwrap()];
                        if let Ok(r) = pay(c, &order.order_id, ch).await {
                            let o = r.order.clone().unwrap();
                            handed.lock().unwrap().push(Handed {
                                order_id: order.order_id.clone(),
                                out_trade_no: r.attempt.as_ref().unwrap().out_trade_no.clone(),
                                version: o.version,
                                status: o.status,
                            });
                            wallet.push((ch, r));
                        }
                    }
                    5 => {
                        let _ = close(c, &order.order_id).await;
                    }
                    _ => {
                        // The payer uses some parameters they hold (maybe old ones).
                        if !wallet.is_empty() {
                            let (ch, r) =
                                &wallet[usize::try_from(rng.below(wallet.len() as u64)).unwrap()];
                            let outcome = ["success", "success", "fail", "abandon"]
                                [usize::try_from(rng.below(4)).unwrap()];
                            p.payer_pays(*ch, r, outcome).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let pauses = chaos.await.unwrap();

    // Let every callback arrive (the sandboxes retry on a 1/100 schedule).
    let mut successes: HashMap<SandboxedChannel, Vec<String>> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for ch in SandboxedChannel::ALL {
            successes.insert(ch, p.sandbox_successes(ch).await);
        }
        let all: Vec<&String> = successes.values().flatten().collect();
        let known = succeeded_attempts(&p);
        let missing: Vec<_> = all.iter().filter(|no| !known.contains(**no)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "charges the core never learned of: {missing:?} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // At most one charge per order that is not a recorded duplicate.
    let charged: Vec<String> = successes.values().flatten().cloned().collect();
    let mut per_order: HashMap<String, usize> = HashMap::new();
    for no in &charged {
        *per_order.entry(order_of_trade(&p, no)).or_default() += 1;
    }
    let duplicates = duplicates_per_order(&p);
    for (order, n) in &per_order {
        let dup = duplicates.get(order).copied().unwrap_or(0);
        assert!(
            *n <= 1 + dup,
            "order {order} charged {n} times with {dup} recorded duplicates (seed {seed})"
        );
    }

    // Every OK Pay reply was given while the order was PAYING, at the version it names.
    let handed = handed.lock().unwrap().clone();
    let states = states_by_version(&p);
    for h in &handed {
        assert_eq!(
            h.status,
            pb::OrderStatus::Paying as i32,
            "{h:?} (seed {seed})"
        );
        assert_eq!(
            states
                .get(&(h.order_id.clone(), h.version))
                .map(String::as_str),
            Some("PAYING"),
            "parameters handed out for {} at version {} of an order that was not PAYING (seed {seed})",
            h.out_trade_no,
            h.version
        );
    }
    // And the history only walks legal edges.
    let illegal = count_illegal_edges(&p);
    assert_eq!(illegal, 0, "illegal order transitions (seed {seed})");
    eprintln!(
        "{ORDERS} orders, {} parameters handed out, {} charges, {} duplicates, {pauses} replica pauses",
        handed.len(),
        charged.len(),
        duplicates.values().sum::<usize>()
    );
}

#[derive(diesel::QueryableByName)]
struct Text1 {
    #[diesel(sql_type = diesel::sql_types::Text)]
    a: String,
}

#[derive(diesel::QueryableByName)]
struct Text2 {
    #[diesel(sql_type = diesel::sql_types::Text)]
    a: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    b: String,
}

fn succeeded_attempts(p: &Platform) -> HashSet<String> {
    let rows: Vec<Text1> = diesel::sql_query(
        "SELECT out_trade_no AS a FROM payment_attempts WHERE status = 'SUCCEEDED'",
    )
    .load(&mut p.db.connect())
    .unwrap();
    rows.into_iter().map(|r| r.a).collect()
}

fn order_of_trade(p: &Platform, out_trade_no: &str) -> String {
    let rows: Vec<Text1> = diesel::sql_query(format!(
        "SELECT order_id::text AS a FROM payment_attempts WHERE out_trade_no = '{out_trade_no}'"
    ))
    .load(&mut p.db.connect())
    .unwrap();
    rows.into_iter()
        .next()
        .map(|r| r.a)
        .unwrap_or_else(|| panic!("a charge for {out_trade_no}, which no attempt knows"))
}

fn duplicates_per_order(p: &Platform) -> HashMap<String, usize> {
    let rows: Vec<Text1> = diesel::sql_query("SELECT order_id::text AS a FROM duplicate_payments")
        .load(&mut p.db.connect())
        .unwrap();
    let mut m = HashMap::new();
    for r in rows {
        *m.entry(r.a).or_default() += 1;
    }
    m
}

fn states_by_version(p: &Platform) -> HashMap<(String, i64), String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        version: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT order_id::text AS id, version, to_status AS status FROM order_transitions",
    )
    .load(&mut p.db.connect())
    .unwrap();
    rows.into_iter()
        .map(|r| ((r.id, r.version), r.status))
        .collect()
}

fn count_illegal_edges(p: &Platform) -> usize {
    let rows: Vec<Text2> = diesel::sql_query(
        "SELECT coalesce(from_status, '') AS a, to_status AS b FROM order_transitions",
    )
    .load(&mut p.db.connect())
    .unwrap();
    let legal = [
        ("", "PENDING"),
        ("PENDING", "PAYING"),
        ("PAYING", "PENDING"),
        ("PENDING", "PAID"),
        ("PAYING", "PAID"),
        ("CLOSED", "PAID"),
        ("PENDING", "CLOSED"),
        ("PAYING", "CLOSED"),
    ];
    rows.iter()
        .filter(|r| !legal.contains(&(r.a.as_str(), r.b.as_str())))
        .inspect(|r| eprintln!("illegal edge {} -> {}", r.a, r.b))
        .count()
}
