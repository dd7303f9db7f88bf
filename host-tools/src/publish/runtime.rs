//! The runtime the async crates (tough, oci-client) run on: a current-thread tokio
//! runtime per operation, so that the rest of the tool stays synchronous.

/// Runs `future` to completion on a current-thread runtime made for it (also for callers
/// of [`super::registry::Registry`]'s async functions, such as the tests).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime starts")
        .block_on(future)
}
