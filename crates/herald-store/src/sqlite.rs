//! SQLite backend (placeholder until the backend lands).
