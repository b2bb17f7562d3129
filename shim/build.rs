//! Generates oomguard's own event messages from
//! `proto/oomguard/events/v1/oom.proto` (the published contract, at the
//! repository's root for consumers in other languages) with rust-protobuf's
//! pure-Rust parser: no protoc needed to build the shim.

fn main() {
    let proto = "../proto/oomguard/events/v1/oom.proto";
    println!("cargo:rerun-if-changed={proto}");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("../proto")
        .input(proto)
        .cargo_out_dir("proto")
        // No reflection or embedded descriptor: the shim encodes and the
        // events command decodes, nothing looks messages up by name.
        .customize(protobuf_codegen::Customize::default().lite_runtime(true))
        .run_from_script();
}
