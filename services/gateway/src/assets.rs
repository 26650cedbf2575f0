//! The pages and their files, embedded in the binary at compile time (no build step, nothing
//! fetched from elsewhere): `GET /`, `GET /admin`, `GET /assets/<name>`.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "assets/"]
struct Assets;

fn serve(name: &str) -> Response {
    match Assets::get(name) {
        Some(file) => {
            let mime = mime_guess::from_path(name).first_or_octet_stream();
            (
                [
                    (header::CONTENT_TYPE, mime.to_string()),
                    // Pages change with the binary; a reload must see the new one.
                    (header::CACHE_CONTROL, "no-cache".to_string()),
                ],
                file.data,
            )
                .into_response()
        }
        None => crate::error::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file")
            .into_response(),
    }
}

pub async fn upload_page() -> Response {
    serve("index.html")
}

pub async fn admin_page() -> Response {
    serve("admin.html")
}

pub async fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}
