//! Every error on its way to a client, and the one place that maps each
//! error of the layers below to an HTTP status.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::{IncrementError, PostConfigError};
use crate::replication::AnswerError;
use crate::storage::StoreError;

/// Seconds a client is asked to wait before retrying a write refused
/// because storage is failing or slow.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
    /// Sent as `Retry-After` (seconds) on a 503 worth retrying.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message.to_string())
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.body[key] = value;
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::Overflow(_) => StatusCode::BAD_REQUEST,
            StoreError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            ref e if e.is_transient() => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .retry_after(RETRY_AFTER_SECS);
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<PostConfigError> for ApiError {
    fn from(e: PostConfigError) -> Self {
        let message = e.to_string();
        match e {
            PostConfigError::Store(e) => e.into(),
            PostConfigError::NotMember { actors } => {
                let actors: Vec<String> = actors.iter().map(|a| a.to_string()).collect();
                ApiError::new(StatusCode::CONFLICT, message).with("actors", json!(actors))
            }
        }
    }
}

impl From<IncrementError> for ApiError {
    fn from(e: IncrementError) -> Self {
        let message = e.to_string();
        match e {
            IncrementError::Store(e) => e.into(),
            IncrementError::NotMember { actors, .. } => {
                let actors: Vec<String> = actors.iter().map(|a| a.to_string()).collect();
                ApiError::new(StatusCode::CONFLICT, message).with("actors", json!(actors))
            }
            IncrementError::Replicas {
                stored,
                required,
                values,
                ..
            } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
                .with("stored", json!(stored))
                .with("required", json!(required))
                // Values can exceed what a JSON number holds exactly: strings.
                .with(
                    "local_values",
                    json!(values.iter().map(u128::to_string).collect::<Vec<_>>()),
                )
                .retry_after(RETRY_AFTER_SECS),
            IncrementError::TooFewActors {
                required,
                available,
            } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
                .with("required", json!(required))
                .with("available", json!(available)),
        }
    }
}

impl From<AnswerError> for ApiError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Store(e) => e.into(),
            bad => ApiError::bad_request(bad.to_string()),
        }
    }
}
