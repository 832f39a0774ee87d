//! envd's `filesystem.Filesystem` Connect service and its `/files` REST endpoints,
//! over a sandbox's absolute-path file operations (made with the sandbox user's
//! permissions in the guest).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tvm_proto::{EntryKind, FsEntry, FsOp, GuestMsg, JOB_UID};

use super::access::{
    check_user, guest_path, respond as reply, sandbox_error, target, unary, Target,
};
use super::connect::{Code, Codec, ConnectError};
use super::pb::filesystem as fp;
use crate::server::AppState;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    let unsupported = || post(no_watch);
    Router::new()
        .route("/e2b/envd/files", axum::routing::get(read).post(write))
        .route("/e2b/envd/filesystem.Filesystem/Stat", post(stat))
        .route("/e2b/envd/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/e2b/envd/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/e2b/envd/filesystem.Filesystem/Move", post(move_entry))
        .route("/e2b/envd/filesystem.Filesystem/Remove", post(remove))
        .route("/e2b/envd/filesystem.Filesystem/WatchDir", unsupported())
        .route(
            "/e2b/envd/filesystem.Filesystem/CreateWatcher",
            unsupported(),
        )
        .route(
            "/e2b/envd/filesystem.Filesystem/GetWatcherEvents",
            unsupported(),
        )
        .route(
            "/e2b/envd/filesystem.Filesystem/RemoveWatcher",
            unsupported(),
        )
}

async fn no_watch() -> Response {
    ConnectError::new(
        Code::Unimplemented,
        "watching a directory is not supported by TVM's envd yet; list it again instead",
    )
    .into_response()
}

/// A file-system entry as envd reports it.
fn entry_info(e: FsEntry) -> fp::EntryInfo {
    let kind = match e.kind {
        EntryKind::File => fp::FileType::File,
        EntryKind::Dir => fp::FileType::Directory,
        EntryKind::Symlink => fp::FileType::Symlink,
        EntryKind::Other => fp::FileType::Unspecified,
    };
    fp::EntryInfo {
        name: e.name,
        r#type: kind as i32,
        path: e.path,
        size: e.size as i64,
        mode: e.mode & 0o7777,
        permissions: permissions(e.mode),
        owner: user_name(e.uid),
        group: user_name(e.gid),
        modified_time: Some(super::pb::Timestamp {
            seconds: (e.modified_unix_ns / 1_000_000_000) as i64,
            nanos: (e.modified_unix_ns % 1_000_000_000) as i32,
        }),
        symlink_target: e.symlink_target,
        metadata: Default::default(),
    }
}

/// `ls -l`'s mode string, e.g. `-rw-r--r--` (Go's `FileMode.String()` as envd shows it).
fn permissions(mode: u32) -> String {
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'L',
        0o010000 => 'p',
        0o140000 => 'S',
        0o020000 => 'c',
        0o060000 => 'D',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// The guest's users as E2B names them: the sandbox user is `user`.
fn user_name(id: u32) -> String {
    match id {
        0 => "root".into(),
        JOB_UID => "user".into(),
        other => other.to_string(),
    }
}

/// One file operation, answered with its entries.
async fn fs_entries(
    st: &AppState,
    t: &Target,
    op: FsOp,
) -> Result<Vec<fp::EntryInfo>, ConnectError> {
    match st
        .sandboxes
        .fs(&t.caller, &t.id, op)
        .await
        .map_err(|e| sandbox_error(&e))?
    {
        GuestMsg::Entries { entries } => Ok(entries.into_iter().map(entry_info).collect()),
        GuestMsg::Done => Ok(Vec::new()),
        other => Err(ConnectError::new(
            Code::Internal,
            format!(
                "the guest agent answered {} unexpectedly",
                crate::converse::kind(&other)
            ),
        )),
    }
}

fn one(mut v: Vec<fp::EntryInfo>) -> Result<fp::EntryInfo, ConnectError> {
    v.pop()
        .ok_or_else(|| ConnectError::new(Code::Internal, "the guest agent returned no entry"))
}

/// A unary filesystem call: decoded, its sandbox found, and its user checked.
fn call<M>(
    st: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Codec, M, Target), ConnectError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    let r = unary(st, headers, body)?;
    check_user(headers, None)?;
    Ok(r)
}

async fn stat(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, fp::StatRequest, _) = call(&st, &headers, &body)?;
        let path = guest_path(&req.path)?;
        let entry = one(fs_entries(&st, &t, FsOp::Stat { path }).await?)?;
        Ok((codec, fp::StatResponse { entry: Some(entry) }))
    };
    reply(r.await)
}

async fn list_dir(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, fp::ListDirRequest, _) = call(&st, &headers, &body)?;
        let path = guest_path(&req.path)?;
        let depth = req.depth.clamp(1, 64);
        let entries = fs_entries(&st, &t, FsOp::List { path, depth }).await?;
        Ok((codec, fp::ListDirResponse { entries }))
    };
    reply(r.await)
}

async fn make_dir(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, fp::MakeDirRequest, _) = call(&st, &headers, &body)?;
        let path = guest_path(&req.path)?;
        let entry = one(fs_entries(&st, &t, FsOp::MakeDir { path }).await?)?;
        Ok((codec, fp::MakeDirResponse { entry: Some(entry) }))
    };
    reply(r.await)
}

async fn move_entry(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, fp::MoveRequest, _) = call(&st, &headers, &body)?;
        let from = guest_path(&req.source)?;
        let to = guest_path(&req.destination)?;
        let entry = one(fs_entries(&st, &t, FsOp::Move { from, to }).await?)?;
        Ok((codec, fp::MoveResponse { entry: Some(entry) }))
    };
    reply(r.await)
}

async fn remove(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, fp::RemoveRequest, _) = call(&st, &headers, &body)?;
        let path = guest_path(&req.path)?;
        fs_entries(&st, &t, FsOp::Remove { path }).await?;
        Ok((codec, fp::RemoveResponse {}))
    };
    reply(r.await)
}

/// envd's REST error: `{"code": <status>, "message": ...}`.
fn rest_error(e: &ConnectError) -> Response {
    #[derive(Serialize)]
    struct Body<'a> {
        code: u16,
        message: &'a str,
    }
    let status = match e.code {
        // The SDKs read 502 as "the sandbox is not running".
        Code::Unavailable => StatusCode::BAD_GATEWAY,
        c => c.http_status(),
    };
    let body = Body {
        code: status.as_u16(),
        message: &e.message,
    };
    (status, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct FileQuery {
    path: Option<String>,
    username: Option<String>,
}

/// `GET /files?path=`: the file's bytes.
pub(crate) async fn read(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> Response {
    let r = async {
        let t = target(&st, &headers)?;
        check_user(&headers, q.username.as_deref())?;
        let path = q
            .path
            .as_deref()
            .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "path is required"))?;
        let path = guest_path(path)?;
        match st
            .sandboxes
            .fs(&t.caller, &t.id, FsOp::Read { path, max_bytes: 0 })
            .await
            .map_err(|e| sandbox_error(&e))?
        {
            GuestMsg::FileData { content } => Ok(content),
            other => Err(ConnectError::new(
                Code::Internal,
                format!(
                    "the guest agent answered {} unexpectedly",
                    crate::converse::kind(&other)
                ),
            )),
        }
    };
    match r.await {
        Ok(content) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            content,
        )
            .into_response(),
        Err(e) => rest_error(&e),
    }
}

#[derive(Debug, Serialize)]
struct Written {
    name: String,
    r#type: &'static str,
    path: String,
}

/// `POST /files`: multipart (field `file`, the file name its path unless `?path=`
/// names it) or one `application/octet-stream` body for `?path=`.
pub(crate) async fn write(
    State(st): State<Arc<AppState>>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let r = async {
        let t = target(&st, &headers)?;
        check_user(&headers, q.username.as_deref())?;
        if headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
        {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "compressed uploads (gzip=True) are not supported by TVM; write without gzip",
            ));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if content_type.starts_with("multipart/form-data") {
            let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
                ConnectError::new(Code::InvalidArgument, format!("multipart body: {e}"))
            })?;
            while let Some(field) = form.next_field().await.map_err(|e| {
                ConnectError::new(Code::InvalidArgument, format!("multipart body: {e}"))
            })? {
                let name = field.file_name().map(str::to_string);
                let data = field.bytes().await.map_err(|e| {
                    ConnectError::new(Code::InvalidArgument, format!("multipart body: {e}"))
                })?;
                let path = match (&q.path, name) {
                    (Some(p), _) => p.clone(),
                    (None, Some(n)) if !n.is_empty() => n,
                    _ => {
                        return Err(ConnectError::new(
                            Code::InvalidArgument,
                            "each file needs a path: ?path= or the part's file name",
                        ))
                    }
                };
                files.push((path, data.to_vec()));
            }
        } else {
            let path = q.path.clone().ok_or_else(|| {
                ConnectError::new(Code::InvalidArgument, "path is required for a raw upload")
            })?;
            let max = st.sandboxes.settings().max_file_bytes as usize;
            let body = axum::body::to_bytes(req.into_body(), max.saturating_add(1))
                .await
                .map_err(|e| {
                    ConnectError::new(
                        Code::InvalidArgument,
                        format!("the upload could not be read (at most {max} bytes): {e}"),
                    )
                })?;
            files.push((path, body.to_vec()));
        }
        if files.is_empty() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "no file in the upload",
            ));
        }
        let mut written = Vec::new();
        for (path, content) in files {
            let path = guest_path(&path)?;
            let entry = one(fs_entries(&st, &t, FsOp::Write { path, content }).await?)?;
            written.push(Written {
                name: entry.name,
                r#type: "file",
                path: entry.path,
            });
        }
        Ok(written)
    };
    match r.await {
        Ok(w) => Json(w).into_response(),
        Err(e) => rest_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(0o100644), "-rw-r--r--");
        assert_eq!(permissions(0o040755), "drwxr-xr-x");
        assert_eq!(permissions(0o120777), "Lrwxrwxrwx");
    }

    #[test]
    fn entries_carry_envd_fields() {
        let e = entry_info(FsEntry {
            name: "a.txt".into(),
            path: "/home/user/a.txt".into(),
            kind: EntryKind::File,
            size: 5,
            mode: 0o100644,
            uid: JOB_UID,
            gid: JOB_UID,
            modified_unix_ns: 1_500_000_000,
            symlink_target: None,
        });
        assert_eq!(e.r#type, fp::FileType::File as i32);
        assert_eq!((e.owner.as_str(), e.mode, e.size), ("user", 0o644, 5));
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["type"], "FILE_TYPE_FILE");
        assert_eq!(json["size"], "5");
        assert_eq!(json["modifiedTime"], "1970-01-01T00:00:01.500Z");
    }
}
