//! Errors as HTTP answers: a status code and a one-line text body.
//!
//! Messages about the client's own input (a bad name, a body too large) are
//! sent as they are; server-side failures are logged in full and answered
//! with a bare 500, so no server path leaks to a client.

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use ferry_files::StoreError;

use crate::path::BadPath;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad file name: {0}")]
    BadName(#[from] BadPath),
    #[error("{0}")]
    BadRequest(String),
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("body is larger than the {limit}-byte upload limit")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("no space left to store the upload")]
    NoSpace,
    #[error("{0}")]
    Internal(String),
}

impl HttpError {
    /// A store failure while reading: anything that is not a servable file
    /// (missing, a directory, a symlink out of the root) is simply not found.
    pub fn from_read(e: StoreError) -> HttpError {
        match e {
            StoreError::NotFound(n) | StoreError::NotAFile(n) | StoreError::Escapes(n) => HttpError::NotFound(n),
            other => HttpError::Internal(other.to_string()),
        }
    }

    /// A store failure while writing: a directory where the file should go,
    /// or a file where a parent directory should be, is a conflict.
    pub fn from_write(e: StoreError) -> HttpError {
        use std::io::ErrorKind::{AlreadyExists, NotADirectory};
        match e {
            StoreError::NotAFile(n) => HttpError::Conflict(format!("not a regular file: {n}")),
            // Creating a parent directory where a file is gives AlreadyExists.
            StoreError::Io { source, context } if matches!(source.kind(), NotADirectory | AlreadyExists) => {
                let name = context.strip_prefix("commit ").unwrap_or(&context);
                HttpError::Conflict(format!("a parent of {name} is not a directory"))
            }
            other => HttpError::from_read(other),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadName(_) | HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::Conflict(_) => StatusCode::CONFLICT,
            HttpError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A short `text/plain` answer.
pub fn text(status: StatusCode, message: &str) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n")).into_response()
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let HttpError::Internal(detail) = &self {
            tracing::error!("http: {detail}");
            return text(status, "internal server error");
        }
        text(status, &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn store_errors_map_to_statuses() {
        let nf = HttpError::from_read(StoreError::Escapes("out/x".into()));
        assert_eq!((nf.status(), nf.to_string().as_str()), (StatusCode::NOT_FOUND, "no such file: out/x"));
        assert_eq!(HttpError::from_read(StoreError::NotAFile("d".into())).status(), StatusCode::NOT_FOUND);
        assert_eq!(HttpError::from_write(StoreError::NotAFile("d".into())).status(), StatusCode::CONFLICT);
        let notdir =
            StoreError::Io { context: "commit a/b".into(), source: io::Error::from(io::ErrorKind::NotADirectory) };
        assert_eq!(HttpError::from_write(notdir).status(), StatusCode::CONFLICT);
        let io = StoreError::Io { context: "open /srv/secret".into(), source: io::Error::other("boom") };
        let resp = HttpError::from_read(io).into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
