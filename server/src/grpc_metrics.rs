//! gRPC latency: a tower wrapper (around a served service, or a client's channel) that observes
//! the time to the response headers (the whole call for unary RPCs) by service and method, after
//! any fixed leading label values (e.g. the channel of a client). Labels come only from the known
//! descriptor set, so made-up paths cannot grow the label set.
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

/// Wraps services so their calls are timed into `histogram` (labels: the prefix values, then
/// service and method).
#[derive(Clone)]
pub struct Timed {
    histogram: HistogramVec,
    known: Arc<HashSet<String>>,
    prefix: Arc<Vec<String>>,
}

impl Timed {
    pub fn new(histogram: HistogramVec, known: HashSet<String>) -> Self {
        Self {
            histogram,
            known: Arc::new(known),
            prefix: Arc::new(Vec::new()),
        }
    }

    /// The same, with these values for the histogram's leading labels.
    #[must_use]
    pub fn with_prefix(&self, values: &[&str]) -> Self {
        Self {
            prefix: Arc::new(values.iter().map(|v| (*v).to_owned()).collect()),
            ..self.clone()
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
        let prefix = self.timed.prefix.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let mut labels: Vec<&str> = prefix.iter().map(String::as_str).collect();
            labels.extend([service.as_str(), method.as_str()]);
            histogram
                .with_label_values(&labels)
                .observe(start.elapsed().as_secs_f64());
            r
        })
    }
}
