//! The OpenAPI description (issue 10.2): served at `/api/openapi.json` with
//! no credential, OpenAPI 3.1, and it describes exactly what the router
//! serves. The router can't serve an undescribed route (every route is added
//! from its handler's description, and a unit test in `http/mod.rs` refuses
//! any other); here every described operation must be a real route of the
//! running binary, and SPEC §5's routes must all be there.

use serde_json::Value;

use crate::util::{write_config, Proc};

/// SPEC §5's routes, as a floor: the description may hold more, never fewer.
const SPEC_ROUTES: &[(&str, &str)] = &[
    ("post", "/api/websocket"),
    ("get", "/api/websocket"),
    ("post", "/api/channels/{channel}/messages"),
    ("post", "/api/users/{user}/notifications"),
    ("post", "/api/batch"),
    ("get", "/api/channels/{channel}/messages"),
    ("get", "/api/venues/updates"),
    ("get", "/api/venues/{venue}/updates"),
    ("get", "/api/venues/{venue}/vibe-checks"),
    ("get", "/api/venues/{venue}/promotions"),
    ("get", "/api/notifications"),
    ("post", "/api/notifications/read"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/realtime-demo"),
    ("get", "/api/openapi.json"),
    ("get", "/ws"),
    ("get", "/admin"),
    ("get", "/api/admin/channels"),
    ("get", "/api/admin/channels/{channel}"),
    ("get", "/api/admin/users/{user}"),
    ("post", "/api/admin/users/{user}/disconnect"),
];

#[tokio::test]
async fn openapi_describes_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let http = crate::util::http();

    let response = http
        .get(format!("{}/api/openapi.json", server.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["client_jwt"]["bearerFormat"], "JWT");

    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in SPEC_ROUTES {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not described"
        );
    }

    // Every described operation is served: not the router's 404 fallback nor
    // its 405, and each of its answers has a description; errors are the one
    // error body.
    for (path, item) in paths {
        let url = format!("{}{}", server.origin, fill(path));
        for (method, op) in item.as_object().unwrap() {
            let request = match method.as_str() {
                "get" => http.get(&url),
                "post" => http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}"),
                other => panic!("{other} {path}: a method the test does not know"),
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert!(
                status != 404 && status != 405,
                "{method} {path} is described but not served: {status} {body}"
            );
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.contains_key(&status.to_string()),
                "{method} {path} answered {status}, which is not described"
            );
            for (code, answer) in responses {
                assert!(answer["description"].is_string(), "{method} {path} {code}");
                if code.starts_with('4') {
                    assert_eq!(
                        answer["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
}

/// Who may read the description: outside dev mode any page (CORS allows
/// every origin); in dev mode, like every other path, local pages and
/// non-browser clients only (SECURITY.md, dev mode).
#[tokio::test]
async fn openapi_is_readable_where_the_rest_of_the_api_is() {
    let http = crate::util::http();
    let get = |origin: String, page: Option<&'static str>| {
        let mut request = http.get(format!("{origin}/api/openapi.json"));
        if let Some(page) = page {
            request = request.header("origin", page);
        }
        async move {
            let response = request.send().await.unwrap();
            let cors = response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), cors)
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = Proc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    assert_eq!(
        get(server.origin.clone(), Some("https://docs.example")).await,
        (200, Some("*".to_owned()))
    );
    drop(server);

    let dev_dir = tempfile::tempdir().unwrap();
    let dev = Proc::start(dev_dir.path(), &["--port", "0"]);
    assert!(dev.stderr().contains("dev mode"));
    assert_eq!(get(dev.origin.clone(), None).await.0, 200);
    assert_eq!(
        get(dev.origin.clone(), Some("http://localhost:3000"))
            .await
            .0,
        200
    );
    assert_eq!(
        get(dev.origin.clone(), Some("https://docs.example"))
            .await
            .0,
        403
    );
}

/// `path` with each `{param}` filled in.
fn fill(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "a" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}
