pub mod cri;
pub mod critest;
pub mod docker;
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
