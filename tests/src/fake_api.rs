//! A Kubernetes API server that replays recorded objects (as `kubectl get -o json` shows
//! them, by resource path) and the watch events a test makes: list, added, modified and
//! deleted objects, and a watch that expires (410 Gone). Plain HTTP; unknown paths 404.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// The recorded objects of one resource path, its watch events so far (by resource
/// version, for a watch that starts after them), and its watchers.
struct Collection {
    objects: Vec<Value>,
    history: Vec<(u64, Value)>,
    events: broadcast::Sender<Value>,
}

#[derive(Clone)]
pub struct FakeApi {
    collections: Arc<Mutex<BTreeMap<String, Collection>>>,
    version: Arc<Mutex<u64>>,
    /// Paths answered with an error status instead (RBAC, an overloaded server).
    failing: Arc<Mutex<BTreeMap<String, u16>>>,
}

impl FakeApi {
    pub fn new(recorded: &Value) -> Self {
        let collections = recorded
            .as_object()
            .unwrap()
            .iter()
            .map(|(path, objects)| {
                let collection = Collection {
                    objects: objects.as_array().unwrap().clone(),
                    history: Vec::new(),
                    events: broadcast::channel(64).0,
                };
                (path.clone(), collection)
            })
            .collect();
        Self {
            collections: Arc::new(Mutex::new(collections)),
            version: Arc::new(Mutex::new(10_000)),
            failing: Arc::default(),
        }
    }

    /// Answers every request for `path` with `code` (e.g. 403) until `heal`.
    pub fn fail(&self, path: &str, code: u16) {
        self.failing.lock().unwrap().insert(path.into(), code);
    }

    pub fn heal(&self, path: &str) {
        self.failing.lock().unwrap().remove(path);
    }

    fn next_version(&self) -> u64 {
        let mut v = self.version.lock().unwrap();
        *v += 1;
        *v
    }

    /// A watch event on `path`: ADDED, MODIFIED or DELETED `object`.
    pub fn event(&self, path: &str, kind: &str, mut object: Value) {
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let mut collections = self.collections.lock().unwrap();
        let c = collections.get_mut(path).unwrap();
        let name = object["metadata"]["name"].clone();
        c.objects.retain(|o| o["metadata"]["name"] != name);
        if kind != "DELETED" {
            c.objects.push(object.clone());
        }
        let event = json!({"type": kind, "object": object});
        c.history.push((version, event.clone()));
        let _ = c.events.send(event);
    }

    /// The watch expires (410 Gone) while the objects became `objects`: only a new list
    /// shows the change.
    pub fn expire(&self, path: &str, objects: Vec<Value>) {
        let mut collections = self.collections.lock().unwrap();
        let c = collections.get_mut(path).unwrap();
        c.objects = objects;
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "message": "too old resource version",
            "reason": "Expired", "code": 410}});
        let version = self.next_version();
        c.history.push((version, gone.clone()));
        let _ = c.events.send(gone);
    }
}

impl FakeApi {
    /// Serves on `listener` (bound wherever the caller needs it, e.g. inside a node's
    /// namespace) from the current tokio runtime; returns the address to put in a
    /// kubeconfig.
    pub fn serve(&self, listener: std::net::TcpListener) -> std::io::Result<SocketAddr> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = Router::new().fallback(respond).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(addr)
    }
}

async fn respond(
    State(api): State<FakeApi>,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let path = uri.path().to_string();
    if let Some(code) = api.failing.lock().unwrap().get(&path).copied() {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": code, "message": format!("{path} refused by the test")});
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, axum::Json(status)).into_response();
    }
    let collections = api.collections.lock().unwrap();
    let Some(c) = collections.get(&path) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("{path} not found")});
        return (StatusCode::NOT_FOUND, axum::Json(status)).into_response();
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        // What happened since the version the client has, then what happens next.
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let missed: Vec<Value> = c
            .history
            .iter()
            .filter(|(v, _)| *v > since)
            .map(|(_, e)| e.clone())
            .collect();
        let next = BroadcastStream::new(c.events.subscribe()).filter_map(|e| async move { e.ok() });
        let lines = futures::stream::iter(missed)
            .chain(next)
            .map(|e| Ok::<_, std::io::Error>(format!("{e}\n").into_bytes()));
        return Response::new(Body::from_stream(lines));
    }
    let list = json!({"kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": api.version.lock().unwrap().to_string()},
        "items": c.objects});
    axum::Json(list).into_response()
}
