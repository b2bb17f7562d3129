//! Generates the gVisor monitoring messages from `proto/gvisor_monitor.proto`
//! (our own minimal description) with rust-protobuf's pure-Rust parser: no
//! protoc needed on the machine.

fn main() {
    println!("cargo:rerun-if-changed=proto/gvisor_monitor.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/gvisor_monitor.proto")
        .cargo_out_dir("proto")
        // No reflection or embedded descriptors: smaller, and the shim only
        // decodes.
        .customize(protobuf_codegen::Customize::default().lite_runtime(true))
        .run_from_script();
}
