//! The service [`crate::serve`] runs on each connection: `GET` and `HEAD` of
//! `/files/...` go straight to the file handler, everything else through
//! the router.
//!
//! Downloads are nearly all of a file gateway's requests. On a cached small
//! file, the router's dispatch (path matching, and the boxed future and
//! cloned service of the middleware that counts responses) took about a
//! tenth of the server's CPU time per request. The lane answers exactly as
//! the router would: the same handler, and the same count by status class.

use std::convert::Infallible;
use std::pin::Pin;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;

use crate::get::get_file;
use crate::path::FILES_PREFIX;
use crate::router::router;
use crate::state::HttpState;

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

#[derive(Clone)]
pub struct FileLane {
    state: HttpState,
    router: TowerToHyperService<Router>,
}

impl FileLane {
    pub fn new(state: HttpState) -> FileLane {
        FileLane { router: TowerToHyperService::new(router(state.clone())), state }
    }

    pub fn state(&self) -> &HttpState {
        &self.state
    }
}

/// Whether the router would send this request to [`get_file`].
fn is_file_read<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path().starts_with(FILES_PREFIX)
}

impl Service<Request<Incoming>> for FileLane {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        if is_file_read(&req) {
            let state = self.state.clone();
            // A GET or HEAD body means nothing; hyper discards it.
            let (parts, _body) = req.into_parts();
            Box::pin(async move {
                let resp = get_file(State(state.clone()), parts.method, parts.uri, parts.headers).await.into_response();
                state.metrics().record_response(resp.status());
                Ok(resp)
            })
        } else {
            Box::pin(self.router.call(req))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn only_reads_of_files_take_the_lane() {
        assert!(is_file_read(&req(Method::GET, "/files/a")));
        assert!(is_file_read(&req(Method::HEAD, "/files/a/b?x=1")));
        assert!(is_file_read(&req(Method::GET, "/files/")));
        assert!(is_file_read(&req(Method::GET, "/files/..")), "refused by the handler, as via the router");
        assert!(!is_file_read(&req(Method::PUT, "/files/a")));
        assert!(!is_file_read(&req(Method::POST, "/files/a")));
        assert!(!is_file_read(&req(Method::GET, "/files")));
        assert!(!is_file_read(&req(Method::GET, "/api/files")));
        assert!(!is_file_read(&req(Method::GET, "/")));
    }
}
