//! gRPC status codes for the Task service's answers: containerd maps them to
//! its errdefs (NotFound, FailedPrecondition, ...) and clients act on them.

use log::{debug, info};
use ttrpc::{get_status, Code};

use containerd_shim_protos::ttrpc;

pub type RpcResult<T> = ttrpc::Result<T>;

/// Errors are built only to be answered, so this is where each failed RPC
/// leaves its line in the log (containerd logs few of them itself).
pub fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    let msg = msg.into();
    if code == Code::NOT_FOUND {
        debug!("rpc answer code={code:?} error={msg:?}");
    } else {
        info!("rpc answer code={code:?} error={msg:?}");
    }
    ttrpc::Error::RpcStatus(get_status(code, msg))
}

pub fn invalid(msg: impl Into<String>) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, msg)
}

pub fn not_found(msg: impl Into<String>) -> ttrpc::Error {
    status(Code::NOT_FOUND, msg)
}

pub fn already_exists(msg: impl Into<String>) -> ttrpc::Error {
    status(Code::ALREADY_EXISTS, msg)
}

pub fn precondition(msg: impl Into<String>) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, msg)
}

pub fn internal(msg: impl Into<String>) -> ttrpc::Error {
    status(Code::INTERNAL, msg)
}

pub fn unimplemented(msg: impl Into<String>) -> ttrpc::Error {
    status(Code::UNIMPLEMENTED, msg)
}

/// A runtime binary's failure, with the code its message implies.
pub fn from_runtime(err: oomguard_runtimes::Error) -> ttrpc::Error {
    if err.is_not_found() {
        not_found(err.to_string())
    } else {
        status(Code::UNKNOWN, err.to_string())
    }
}
