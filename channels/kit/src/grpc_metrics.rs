//! Server-side gRPC latency: a tower wrapper around each service that observes the time to the
//! response headers (the whole call for unary RPCs) by service and method. Labels come only from
//! the served descriptor set, so a client making up paths cannot grow the label set.
use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::HistogramVec;
use prost::Message;
use tonic::codegen::http;
use tonic::server::NamedService;

/// The `/package.Service/Method` paths of a descriptor set.
pub fn known_paths(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    let mut paths = HashSet::new();
    for bytes in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else {
            continue;
        };
        for f in set.file {
            for s in &f.service {
                for m in &s.method {
                    paths.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                }
            }
        }
    }
    paths
}

/// Wraps services so their calls are timed into `histogram` (labels: service, method).
#[derive(Clone)]
pub struct Timed {
    histogram: HistogramVec,
    known: Arc<HashSet<String>>,
}

impl Timed {
    pub fn new(histogram: HistogramVec, known: HashSet<String>) -> Self {
        Self {
            histogram,
            known: Arc::new(known),
        }
    }

    pub fn wrap<S>(&self, inner: S) -> TimedService<S> {
        TimedService {
            inner,
            timed: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TimedService<S> {
    inner: S,
    timed: Timed,
}

impl<S: NamedService> NamedService for TimedService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tower::Service<http::Request<B>> for TimedService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let (service, method) = if self.timed.known.contains(path) {
            let (s, m) = path[1..].split_once('/').unwrap_or(("other", "other"));
            (s.to_owned(), m.to_owned())
        } else {
            ("other".to_owned(), "other".to_owned())
        };
        let histogram = self.timed.histogram.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            histogram
                .with_label_values(&[&service, &method])
                .observe(start.elapsed().as_secs_f64());
            r
        })
    }
}
