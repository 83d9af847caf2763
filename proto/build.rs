//! Compiles every `.proto` under `proto/` with protox (pure Rust, so a fresh machine needs no
//! system `protoc`) and writes the descriptor set that gRPC reflection serves.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "proto/common/v1/money.proto",
        "proto/payment/v1/payment.proto",
        "proto/payment/v1/audit.proto",
        "proto/channel/v1/channel.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    std::fs::write(out.join("payplatform_descriptor.bin"), fds.encode_to_vec())?;
    // Reflection must list only what a process serves: payd serves payment.v1 and
    // ChannelEvents (not ChannelAdapter); an adapter serves ChannelAdapter only.
    let only = |keep_file: &dyn Fn(&str) -> bool, keep_service: &dyn Fn(&str) -> bool| {
        let mut set = fds.clone();
        set.file.retain(|f| keep_file(f.name()));
        for f in &mut set.file {
            f.service.retain(|s| keep_service(s.name()));
        }
        set.encode_to_vec()
    };
    std::fs::write(
        out.join("payd_descriptor.bin"),
        only(&|_| true, &|s| s != "ChannelAdapterService"),
    )?;
    std::fs::write(
        out.join("adapter_descriptor.bin"),
        only(&|f| !f.starts_with("payment/"), &|s| {
            s == "ChannelAdapterService"
        }),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Deterministic encoding of map fields: the idempotency fingerprint hashes encoded requests.
        .btree_map(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
