//! Boot sequence (placeholder).
