//! The 14 basic properties, in wire order: content-type, content-encoding, headers,
//! delivery-mode, priority, correlation-id, reply-to, expiration, message-id, timestamp,
//! type, user-id, app-id, cluster-id.
//!
//! "Raw properties" below means the part of a content header payload after class-id,
//! weight and body-size: the 16-bit property flags (with continuation) and the fields.

use crate::types::FieldTable;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

/// What the broker needs from a message's properties without decoding all of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PropertiesSummary {
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub expiration: Option<String>,
    pub has_headers: bool,
}
