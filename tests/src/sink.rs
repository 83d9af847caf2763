//! A test `EventSink`: a small gRPC server in the test process that records every event it
//! receives (in arrival order) and can refuse a share of deliveries, or all of them ("down").
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use payproto::payment::v1 as pb;
use payproto::payment::v1::event_sink_service_server::{EventSinkService, EventSinkServiceServer};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    received: Mutex<Vec<pb::Event>>,
    /// Per mille of deliveries refused (UNAVAILABLE), chosen by a counter, not at random, so a
    /// run is repeatable.
    fail_per_mille: AtomicU32,
    down: AtomicBool,
    calls: AtomicU64,
    refused: AtomicU64,
}

struct Service(Arc<State>);

#[tonic::async_trait]
impl EventSinkService for Service {
    async fn deliver(
        &self,
        req: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let share = u64::from(self.0.fail_per_mille.load(Ordering::SeqCst));
        if self.0.down.load(Ordering::SeqCst) || (share > 0 && (n * 7919) % 1000 < share) {
            self.0.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Status::unavailable("test sink refuses this delivery"));
        }
        let event = req
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("no event"))?;
        self.0
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
        Ok(Response::new(pb::DeliverResponse {}))
    }
}

/// A running test sink; stops when dropped.
pub struct TestSink {
    pub url: String,
    state: Arc<State>,
    _server: tokio::task::JoinHandle<()>,
}

impl TestSink {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        let state = Arc::new(State::default());
        let svc = EventSinkServiceServer::new(Service(state.clone()));
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            url: format!("http://{addr}"),
            state,
            _server: server,
        }
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<pb::Event> {
        self.state
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Refuse every delivery (`true`) or none (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Refuse this share of deliveries (0..=1000 per mille).
    pub fn fail_per_mille(&self, share: u32) {
        self.state
            .fail_per_mille
            .store(share.min(1000), Ordering::SeqCst);
    }

    /// Deliveries refused so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }
}
