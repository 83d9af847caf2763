//! The whole platform as real processes: three sandboxes (fresh keys from `sandbox keygen`),
//! three adapters pointed at them by base URL and key files only, and `payd` pointed at the
//! adapters. For end-to-end tests.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use payproto::channel::v1::channel_adapter_service_client::ChannelAdapterServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;

use crate::{Payd, RedisNamespace, TestDb, binary, free_addr, start_listening, wait_listening};

/// A channel as the harness runs it: its adapter process against its sandbox process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxedChannel {
    Wechat,
    Alipay,
    Unionpay,
}

impl SandboxedChannel {
    pub const ALL: [SandboxedChannel; 3] = [
        SandboxedChannel::Wechat,
        SandboxedChannel::Alipay,
        SandboxedChannel::Unionpay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SandboxedChannel::Wechat => "wechat",
            SandboxedChannel::Alipay => "alipay",
            SandboxedChannel::Unionpay => "unionpay",
        }
    }
}

/// A `ChannelAdapter` client as payd holds one (with whatever credential the test chose).
pub type AdapterClient =
    ChannelAdapterServiceClient<InterceptedService<tonic::transport::Channel, Bearer>>;

/// Sends `authorization: Bearer …` when it has a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct AdapterAddrs {
    pub grpc: SocketAddr,
    pub callback: SocketAddr,
    pub metrics: SocketAddr,
}

/// Extra settings for [`Platform::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PlatformOptions {
    /// Added to every payd's environment (e.g. a short `PAYD_LOCK_TTL_MS`).
    pub payd_env: Vec<(String, String)>,
    /// Added to the environment of one adapter.
    pub adapter_env: Vec<(SandboxedChannel, String, String)>,
}

pub struct Platform {
    pub payd: Payd,
    /// The environment every payd of this platform gets (for [`Platform::spawn_payd`]).
    payd_env: Vec<(String, String)>,
    opts: PlatformOptions,
    pub adapters: HashMap<SandboxedChannel, Proc>,
    pub adapter_addrs: HashMap<SandboxedChannel, AdapterAddrs>,
    pub sandboxes: HashMap<SandboxedChannel, Proc>,
    pub sandbox_addrs: HashMap<SandboxedChannel, SocketAddr>,
    pub keys: PathBuf,
    /// Each adapter's secret for payd's ChannelEvents.
    pub tokens: HashMap<SandboxedChannel, String>,
    /// payd's secret for each adapter's ChannelAdapter.
    pub grpc_tokens: HashMap<SandboxedChannel, String>,
    pub ns: RedisNamespace,
    pub db: TestDb,
    http: reqwest::Client,
}

impl Platform {
    /// Starts everything. `time_scale` multiplies the sandboxes' callback retry schedules.
    pub fn start(time_scale: f64) -> Self {
        Self::start_channels(&SandboxedChannel::ALL, time_scale)
    }

    /// Starts payd plus the sandbox and adapter of each channel in `channels` (payd knows all
    /// three endpoints; the others are simply down).
    pub fn start_channels(channels: &[SandboxedChannel], time_scale: f64) -> Self {
        Self::start_with(channels, time_scale, PlatformOptions::default())
    }

    /// As [`Platform::start_channels`], with extra settings.
    pub fn start_with(
        channels: &[SandboxedChannel],
        time_scale: f64,
        opts: PlatformOptions,
    ) -> Self {
        Self::start_on(channels, time_scale, opts, TestDb::create())
    }

    /// As [`Platform::start_with`], on a database the caller created (e.g. on a private
    /// cluster: [`crate::pg_private`]); a private Redis is named by `PAYD_REDIS_URL` in
    /// `opts.payd_env`.
    pub fn start_on(
        channels: &[SandboxedChannel],
        time_scale: f64,
        opts: PlatformOptions,
        db: TestDb,
    ) -> Self {
        let ns = RedisNamespace::new();
        let keys = std::env::temp_dir().join(format!(
            "payplatform-keys-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let status = Command::new(binary("sandbox"))
            .args(["keygen", "--dir"])
            .arg(&keys)
            .status()
            .expect("sandbox keygen");
        assert!(status.success(), "sandbox keygen failed");

        let mut sandboxes = HashMap::new();
        let mut sandbox_addrs = HashMap::new();
        for &ch in channels {
            let (child, [addr]) = start_listening("sandbox", |[addr]| {
                Command::new(binary("sandbox"))
                    .arg(ch.name())
                    .arg("--listen")
                    .arg(addr.to_string())
                    .arg("--keys-dir")
                    .arg(&keys)
                    .arg("--time-scale")
                    .arg(time_scale.to_string())
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn sandbox")
            });
            sandboxes.insert(
                ch,
                Proc {
                    child,
                    name: format!("sandbox {}", ch.name()),
                },
            );
            sandbox_addrs.insert(ch, addr);
        }
        let adapter_addrs: HashMap<SandboxedChannel, AdapterAddrs> = SandboxedChannel::ALL
            .into_iter()
            .map(|c| {
                (
                    c,
                    AdapterAddrs {
                        grpc: free_addr(),
                        callback: free_addr(),
                        metrics: free_addr(),
                    },
                )
            })
            .collect();
        let ep = |c: SandboxedChannel| {
            let tls = opts
                .adapter_env
                .iter()
                .any(|(ch, k, _)| *ch == c && k == "ADAPTER_TLS_CERT_FILE");
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{}", adapter_addrs[&c].grpc)
        };
        // Fresh adapter secrets per run: each adapter may report only for its own channel.
        let tokens: HashMap<SandboxedChannel, String> = SandboxedChannel::ALL
            .into_iter()
            .map(|c| (c, format!("{}-{}", c.name(), uuid::Uuid::new_v4().simple())))
            .collect();
        // And payd's credential towards each adapter, fresh per run too.
        let grpc_tokens: HashMap<SandboxedChannel, String> = SandboxedChannel::ALL
            .into_iter()
            .map(|c| {
                (
                    c,
                    format!("payd-{}-{}", c.name(), uuid::Uuid::new_v4().simple()),
                )
            })
            .collect();
        let token_list = SandboxedChannel::ALL
            .iter()
            .map(|c| format!("{}:{}", c.name(), tokens[c]))
            .collect::<Vec<_>>()
            .join(",");
        let mut payd_env: Vec<(String, String)> = vec![
            (
                "PAYD_CHANNEL_WECHAT_ENDPOINT".into(),
                ep(SandboxedChannel::Wechat),
            ),
            (
                "PAYD_CHANNEL_ALIPAY_ENDPOINT".into(),
                ep(SandboxedChannel::Alipay),
            ),
            (
                "PAYD_CHANNEL_UNIONPAY_ENDPOINT".into(),
                ep(SandboxedChannel::Unionpay),
            ),
            (
                "PAYD_CHANNEL_WECHAT_TOKEN".into(),
                grpc_tokens[&SandboxedChannel::Wechat].clone(),
            ),
            (
                "PAYD_CHANNEL_ALIPAY_TOKEN".into(),
                grpc_tokens[&SandboxedChannel::Alipay].clone(),
            ),
            (
                "PAYD_CHANNEL_UNIONPAY_TOKEN".into(),
                grpc_tokens[&SandboxedChannel::Unionpay].clone(),
            ),
            ("PAYD_ADAPTER_TOKENS".into(), token_list),
        ];
        payd_env.extend(opts.payd_env.iter().cloned());
        let env: Vec<(&str, &str)> = payd_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let payd = Payd::start(&db, &ns, &env);
        let mut p = Self {
            payd,
            payd_env,
            opts,
            adapters: HashMap::new(),
            adapter_addrs,
            sandboxes,
            sandbox_addrs,
            keys,
            tokens,
            grpc_tokens,
            ns,
            db,
            http: reqwest::Client::new(),
        };
        for &ch in channels {
            p.start_adapter(ch);
        }
        p
    }

    /// The environment that points adapter `ch` at its sandbox: base URL and key files only.
    pub fn adapter_env(&self, ch: SandboxedChannel) -> Vec<(String, String)> {
        let k = |f: &str| self.keys.join(ch.name()).join(f).display().to_string();
        let base = self
            .sandbox_addrs
            .get(&ch)
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let a = &self.adapter_addrs[&ch];
        let mut env = vec![
            ("ADAPTER_GRPC_LISTEN".to_owned(), a.grpc.to_string()),
            ("ADAPTER_CALLBACK_LISTEN".to_owned(), a.callback.to_string()),
            ("ADAPTER_METRICS_LISTEN".to_owned(), a.metrics.to_string()),
            ("ADAPTER_CORE_ENDPOINT".to_owned(), self.payd.endpoint()),
            ("ADAPTER_CORE_TOKEN".to_owned(), self.tokens[&ch].clone()),
            (
                "ADAPTER_GRPC_TOKEN".to_owned(),
                self.grpc_tokens[&ch].clone(),
            ),
            (
                "ADAPTER_PUBLIC_CALLBACK_BASE".to_owned(),
                format!("http://{}", a.callback),
            ),
            ("ADAPTER_PLATFORM_TIMEOUT_MS".to_owned(), "3000".to_owned()),
        ];
        let files: &[(&str, &str)] = match ch {
            SandboxedChannel::Wechat => &[
                ("WECHAT_MCHID_FILE", "mchid.txt"),
                ("WECHAT_APPID_FILE", "appid.txt"),
                ("WECHAT_MERCHANT_KEY_FILE", "merchant_key.pem"),
                ("WECHAT_MERCHANT_SERIAL_FILE", "merchant_serial.txt"),
                ("WECHAT_PLATFORM_PUBLIC_KEY_FILE", "platform_public.pem"),
                ("WECHAT_PLATFORM_SERIAL_FILE", "platform_serial.txt"),
                ("WECHAT_APIV3_KEY_FILE", "apiv3_key.txt"),
            ],
            SandboxedChannel::Alipay => &[
                ("ALIPAY_APP_ID_FILE", "app_id.txt"),
                ("ALIPAY_APP_PRIVATE_KEY_FILE", "app_private_key.pem"),
                ("ALIPAY_PUBLIC_KEY_FILE", "alipay_public_key.pem"),
            ],
            SandboxedChannel::Unionpay => &[
                ("UNIONPAY_MER_ID_FILE", "mer_id.txt"),
                ("UNIONPAY_SIGN_KEY_FILE", "merchant_sign_key.pem"),
                ("UNIONPAY_SIGN_CERT_ID_FILE", "merchant_cert_id.txt"),
                // The full trust path: signPubKeyCert → middle → root, nothing pinned.
                ("UNIONPAY_MIDDLE_CERT_FILE", "middle_cert.pem"),
                ("UNIONPAY_ROOT_CERT_FILE", "root_cert.pem"),
            ],
        };
        for (var, file) in files {
            env.push(((*var).to_owned(), k(file)));
        }
        for (c, key, value) in &self.opts.adapter_env {
            if *c == ch {
                env.push((key.clone(), value.clone()));
            }
        }
        match ch {
            SandboxedChannel::Wechat => env.push(("WECHAT_API_BASE".to_owned(), base)),
            SandboxedChannel::Alipay => {
                env.push(("ALIPAY_GATEWAY".to_owned(), format!("{base}/gateway.do")))
            }
            SandboxedChannel::Unionpay => {
                env.push(("UNIONPAY_GATEWAY_BASE".to_owned(), base));
                env.push(("UNIONPAY_ACCEPT_TEST_CN".to_owned(), "true".to_owned()));
            }
        }
        env
    }

    /// Starts the adapter on its fixed ports: payd already knows its gRPC address, and on a restart
    /// the platform calls back the old `notify_url`. (The ports come from below the ephemeral
    /// range, so no outgoing connection can hold them.)
    pub fn start_adapter(&mut self, ch: SandboxedChannel) {
        let bin = format!("{}-adapter", ch.name());
        let mut child = Command::new(binary(&bin))
            .envs(self.adapter_env(ch))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn adapter");
        let a = &self.adapter_addrs[&ch];
        if let Err(e) = wait_listening(
            &mut child,
            &[a.grpc, a.callback, a.metrics],
            Duration::from_secs(30),
        ) {
            let _ = child.kill();
            panic!("{bin}: {e}");
        }
        self.adapters.insert(ch, Proc { child, name: bin });
    }

    /// Another payd replica on the same database, Redis prefix and adapters.
    pub fn spawn_payd(&self) -> Payd {
        let env: Vec<(&str, &str)> = self
            .payd_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Payd::start(&self.db, &self.ns, &env)
    }

    /// SIGKILL the platform's payd (a crash), then start a new one on the same ports with the
    /// same settings (adapters and clients keep their addresses). Returns the time from the
    /// kill until the new process listens.
    pub fn crash_and_restart_payd(&mut self) -> Duration {
        let (grpc, metrics) = (self.payd.grpc, self.payd.metrics);
        let _ = self.payd.child.kill();
        let _ = self.payd.child.wait();
        let killed = std::time::Instant::now();
        let env: Vec<(&str, &str)> = self
            .payd_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.payd = Payd::start_on(&self.db, &self.ns, grpc, metrics, &env);
        killed.elapsed()
    }

    /// SIGKILL: the adapter dies without a chance to answer anyone.
    pub fn kill_adapter(&mut self, ch: SandboxedChannel) {
        if let Some(mut p) = self.adapters.remove(&ch) {
            p.kill();
        }
    }

    pub fn sandbox_url(&self, ch: SandboxedChannel, path: &str) -> String {
        format!("http://{}{path}", self.sandbox_addrs[&ch])
    }

    /// GET a sandbox control endpoint as JSON.
    pub async fn sandbox_get(&self, ch: SandboxedChannel, path: &str) -> serde_json::Value {
        self.http
            .get(self.sandbox_url(ch, path))
            .send()
            .await
            .expect("sandbox reachable")
            .json()
            .await
            .expect("sandbox json")
    }

    /// POST to a sandbox control endpoint; returns (HTTP status, JSON body).
    pub async fn sandbox_post(
        &self,
        ch: SandboxedChannel,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.sandbox_url(ch, path))
            .json(&body)
            .send()
            .await
            .expect("sandbox reachable");
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    /// DELETE a sandbox control endpoint (e.g. reset its faults); returns the HTTP status.
    pub async fn sandbox_delete(&self, ch: SandboxedChannel, path: &str) -> u16 {
        self.http
            .delete(self.sandbox_url(ch, path))
            .send()
            .await
            .expect("sandbox reachable")
            .status()
            .as_u16()
    }

    /// payd's Prometheus text.
    pub async fn payd_metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.payd.metrics))
            .send()
            .await
            .expect("payd metrics")
            .text()
            .await
            .unwrap_or_default()
    }

    /// The adapter's Prometheus text.
    pub async fn adapter_metrics(&self, ch: SandboxedChannel) -> String {
        self.http
            .get(format!(
                "http://{}/metrics",
                self.adapter_addrs[&ch].metrics
            ))
            .send()
            .await
            .expect("adapter metrics")
            .text()
            .await
            .unwrap_or_default()
    }

    /// A `ChannelAdapter` client for adapter `ch` presenting `token` (payd's is
    /// `self.grpc_tokens[&ch]`; `None` sends no credential at all).
    pub async fn adapter_client_with(
        &self,
        ch: SandboxedChannel,
        token: Option<&str>,
    ) -> AdapterClient {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.adapter_addrs[&ch].grpc
        ))
        .expect("adapter endpoint")
        .connect()
        .await
        .expect("adapter reachable");
        let auth = token.map(|t| format!("Bearer {t}").parse().expect("ASCII token"));
        ChannelAdapterServiceClient::with_interceptor(channel, Bearer(auth))
    }

    /// A `ChannelAdapter` client for adapter `ch` with payd's credential, as payd calls it.
    pub async fn adapter_client(&self, ch: SandboxedChannel) -> AdapterClient {
        let token = self.grpc_tokens[&ch].clone();
        self.adapter_client_with(ch, Some(&token)).await
    }

    pub fn keys_dir(&self) -> &Path {
        &self.keys
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.adapters.clear();
        self.sandboxes.clear();
        let _ = std::fs::remove_dir_all(&self.keys);
    }
}

/// Sums a counter's samples in Prometheus text whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
