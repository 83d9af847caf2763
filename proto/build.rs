//! Compiles every `.proto` under `proto/` with protox (pure Rust, so a fresh machine needs no
//! system `protoc`) and writes the descriptor set that gRPC reflection serves.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "proto/common/v1/money.proto",
        "proto/payment/v1/payment.proto",
        "proto/channel/v1/channel.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    std::fs::write(out.join("payplatform_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Deterministic encoding of map fields: the idempotency fingerprint hashes encoded requests.
        .btree_map(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
