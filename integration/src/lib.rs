pub mod cri;
pub mod critest;
pub mod docker;
pub mod gvisor;
pub mod harness;

/// One `#[test]` per scenario and containerd version (1.6, 1.7, 2), in
/// modules named after the version; each scenario is `fn(version: &str)`.
#[macro_export]
macro_rules! on_every_containerd {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_6 { $( #[test] fn $scenario() { super::$scenario("1.6") } )* }
        mod containerd_1_7 { $( #[test] fn $scenario() { super::$scenario("1.7") } )* }
        mod containerd_2 { $( #[test] fn $scenario() { super::$scenario("2") } )* }
    };
}

/// The same for containerd 1.7 and 2.x only (`containerd_1_7`, `containerd_2`).
#[macro_export]
macro_rules! on_containerd_1_7_and_2 {
    ($($scenario:ident),* $(,)?) => {
        mod containerd_1_7 { $( #[test] fn $scenario() { super::$scenario("1.7") } )* }
        mod containerd_2 { $( #[test] fn $scenario() { super::$scenario("2") } )* }
    };
}
