"""The admin API's OpenAPI 3.1 document, built from the same schema classes that validate requests."""

from __future__ import annotations

from typing import Any

from broker.admin import schema
from broker.issuer.keys import MAX_ACTIVATE_AFTER

ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema_ref: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema_ref is not None:
        out["content"] = {"application/json": {"schema": schema_ref}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid input", 401: "Missing or invalid admin key", 403: "Not allowed for this key",
            404: "Not found (or not visible to this key)", 409: "Conflict", 413: "Body too large",
            412: "If-Match names a version that is no longer current", 415: "Wrong content type"}
    return {str(c): _resp(text[c], ERROR) for c in codes}


def _op(summary: str, ok: int, ok_desc: str, *, body: str | None = None, errors: tuple[int, ...] = (401, 404),
        body_type: str = "application/json", params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"adminKey": []}]}
    responses = {str(ok): _resp(ok_desc, {"type": "object"} if ok != 204 else None)}
    responses.update(_errors(*errors))
    op["responses"] = responses
    if body is not None:
        schema_ref = {"$ref": f"#/components/schemas/{body}"} if body_type == "application/json" else {"type": "string"}
        content = {body_type: {"schema": schema_ref}}
        if body_type != "application/json":
            content["application/xml"] = {"schema": {"type": "string"}}
        op["requestBody"] = {"required": True, "content": content}
    if params:
        op["parameters"] = params
    return op


IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Apply only if the resource is still at this ETag (from a GET or an earlier write)"}
ETAG_HEADER = {"ETag": {"description": "The resource's version, for If-Match and If-None-Match",
                        "schema": {"type": "string"}}}
IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "304 (no body) if the resource is still at one of these ETags (weak comparison; "
                                "\"*\": any version). The ETag follows the configuration only, not last_login_at "
                                "or a certificate's days left"}


def _conditional(op: dict[str, Any]) -> dict[str, Any]:
    """A write that honours If-Match (412 when stale) and answers with the new ETag (except a 204)."""
    op.setdefault("parameters", []).append(IF_MATCH)
    op["responses"].update(_errors(400, 412))  # 400: an If-Match header that names nothing
    for status, resp in op["responses"].items():
        if status.startswith("2") and status != "204":
            resp["headers"] = ETAG_HEADER
    return op


def _tagged(op: dict[str, Any]) -> dict[str, Any]:
    """A read or create that answers with the resource's ETag."""
    for status, resp in op["responses"].items():
        if status.startswith("2"):
            resp["headers"] = ETAG_HEADER
    return op


def _cacheable(op: dict[str, Any]) -> dict[str, Any]:
    """A read of a tagged resource that honours If-None-Match (304 with the ETag and no body when unchanged)
    and If-Match (412 when the resource is no longer at the ETag named, checked first)."""
    op.setdefault("parameters", []).extend([IF_NONE_MATCH, IF_MATCH])
    op["responses"]["304"] = {"description": "Not modified: If-None-Match names the current ETag (no body)",
                              "headers": ETAG_HEADER}
    op["responses"].update(_errors(400, 412))  # 400: a conditional header that names nothing
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def openapi_document(public_url: str) -> dict[str, Any]:
    t = _path_param("t", "tenant slug")
    c = _path_param("c", "connection slug")
    client = _path_param("client_id", "app client_id")
    key_id = _path_param("key_id", "admin key id")
    components: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "message", "details"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                           "details": {"type": "object"}},
        },
    }
    for model in (schema.TenantCreate, schema.TenantPatch, schema.AdminKeyCreate, schema.ConnectionBody,
                  schema.AppBody, schema.ConnectionTest):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in js.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = js
    components["ConnectionPatch"] = {"type": "object", "description": "JSON Merge Patch (RFC 7396) of ConnectionBody"}
    components["AppPatch"] = {"type": "object", "description": "JSON Merge Patch (RFC 7396) of AppBody"}
    components["KeyRotate"] = {
        "type": "object", "additionalProperties": False, "description": "Optional; the default is RS256",
        "properties": {
            "alg": {"enum": ["RS256", "ES256"], "default": "RS256"},
            "activate_after": {
                "type": "integer", "minimum": 0, "maximum": MAX_ACTIVATE_AFTER, "default": 0,
                "description": "Seconds until the new key signs; until then it is published in the JWKS and the "
                               "current key goes on signing (a staged rotation). 0: the new key signs at once"},
        },
    }
    audit_params = [
        {"name": "type", "in": "query", "schema": {"enum": ["login", "admin", "token"]}},
        {"name": "outcome", "in": "query", "schema": {"enum": ["success", "failure"]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    ]
    paths: dict[str, Any] = {
        "/tenants": {
            "post": _tagged(_op("Create a tenant (global keys only)", 201, "The tenant", body="TenantCreate",
                                errors=(400, 401, 403, 409, 413, 415))),
            "get": _op("List tenants visible to this key", 200, "Tenants", errors=(401,)),
        },
        "/tenants/{t}": {
            "parameters": [t],
            "get": _cacheable(_tagged(_op("Get a tenant", 200, "The tenant"))),
            "patch": _conditional(_op("Rename a tenant", 200, "The tenant", body="TenantPatch",
                                      errors=(400, 401, 404, 409, 413, 415))),
            "delete": _conditional(_op("Delete a tenant and everything in it", 204, "Deleted",
                                       errors=(401, 403, 404))),
        },
        "/tenants/{t}/admin-keys": {
            "parameters": [t],
            "post": _op("Create a tenant-scoped admin key (shown once)", 201, "{id, key, tenant, expires_at}",
                        body="AdminKeyCreate", errors=(400, 401, 404)),
            "get": _op("List the tenant's admin keys (id, label, created_at, expires_at; never the key)", 200,
                       "Admin keys"),
        },
        "/tenants/{t}/admin-keys/{key_id}": {
            "parameters": [t, key_id],
            "delete": _op("Revoke one of the tenant's admin keys", 204, "Revoked"),
        },
        "/admin-keys": {
            "post": _op("Create a global admin key (global keys only; shown once)", 201,
                        "{id, key, tenant, expires_at}", body="AdminKeyCreate", errors=(400, 401, 403)),
            "get": _op("List every admin key (global keys only)", 200, "Admin keys", errors=(401, 403)),
        },
        "/admin-keys/{key_id}": {
            "parameters": [key_id],
            "delete": _op("Revoke any admin key (global keys only); the last global key is refused", 204,
                          "Revoked", errors=(401, 403, 404, 409)),
        },
        "/tenants/{t}/connections": {
            "parameters": [t],
            "post": _tagged(_op("Create a connection", 201, "The connection", body="ConnectionBody",
                                errors=(400, 401, 404, 409, 413, 415))),
            "get": _op("List connections", 200, "Connections"),
        },
        "/tenants/{t}/connections/{c}": {
            "parameters": [t, c],
            "get": _cacheable(_tagged(_op("Get a connection", 200, "The connection"))),
            "patch": _conditional(_op("Update a connection (merge patch)", 200, "The connection",
                                      body="ConnectionPatch", errors=(400, 401, 404, 409, 413, 415))),
            "delete": _conditional(_op("Delete a connection", 204, "Deleted")),
        },
        "/tenants/{t}/connections/{c}/metadata": {
            "parameters": [t, c],
            "put": _conditional(_op("Upload IdP metadata XML; returns what was understood", 200,
                                    "entityID, SSO URLs and bindings, certificates with expiry, warnings",
                                    body="metadata", body_type="application/samlmetadata+xml",
                                    errors=(400, 401, 404, 409, 413, 415))),
        },
        "/tenants/{t}/connections/{c}/mapping/test": {
            "parameters": [t, c],
            "post": _op("Dry-run the claim mapping on raw attributes", 200, "Profile and per-rule effects",
                        body="ConnectionTest", errors=(400, 401, 404, 415)),
        },
        "/tenants/{t}/apps": {
            "parameters": [t],
            "post": _tagged(_op("Create an app (client secret shown once)", 201,
                                "The app with client_id and client_secret",
                                body="AppBody", errors=(400, 401, 404, 409, 413, 415))),
            "get": _op("List apps", 200, "Apps"),
        },
        "/tenants/{t}/apps/{client_id}": {
            "parameters": [t, client],
            "get": _cacheable(_tagged(_op("Get an app", 200, "The app"))),
            "patch": _conditional(_op("Update an app (merge patch)", 200, "The app", body="AppPatch",
                                      errors=(400, 401, 404, 409, 413, 415))),
            "delete": _conditional(_op("Delete an app", 204, "Deleted")),
        },
        "/tenants/{t}/keys": {
            "parameters": [t],
            "get": _op("The tenant's signing keys, newest first: kid, alg, status (active, pending, retired or "
                       "revoked), active, published, created_at, activates_at, retired_at, revoked_at", 200,
                       "{keys}"),
        },
        "/tenants/{t}/keys/{kid}/revoke": {
            "parameters": [t, {"name": "kid", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": _op("Revoke a signing key that leaked: out of the JWKS at once, its tokens refused. Not the key "
                        "that signs now (409 key_in_use: rotate first); a pending key is withdrawn", 200,
                        "{revoked_kid, keys}", errors=(401, 404, 409)),
        },
        "/tenants/{t}/keys/rotate": {
            "parameters": [t],
            "post": _op("Rotate the tenant's signing key, at once or staged (activate_after); previous keys stay "
                        "published while their tokens may be live", 200, "Keys",
                        body="KeyRotate", errors=(400, 401, 404)),
        },
        "/tenants/{t}/audit": {
            "parameters": [t],
            "get": _op("Audit events, newest first", 200, "{events, next_cursor}", errors=(400, 401, 404),
                       params=audit_params),
        },
        "/audit": {
            "get": _op("Every tenant's audit events and those of no tenant (global keys, deleted tenants), newest "
                       "first; global keys only", 200, "{events, next_cursor}", errors=(400, 401, 403),
                       params=audit_params),
        },
    }
    paths["/tenants/{t}/keys/rotate"]["post"]["requestBody"]["required"] = False  # an empty body is RS256
    paths["/tenants/{t}/connections/{c}/metadata"]["put"]["responses"]["200"]["headers"] = {  # not the XML's tag
        "ETag": {"description": "The connection's new version, for If-Match on its next write",
                 "schema": {"type": "string"}}}
    paths["/tenants/{t}/connections/{c}/metadata"]["put"]["parameters"].append({
        "name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
        "description": "\"*\": write only if the connection has no IdP metadata yet (a first upload); entity "
                       "tags: write only if the connection is at none of them. 412 otherwise, nothing written"})
    for path in ("/tenants/{t}/admin-keys", "/admin-keys"):  # the label is optional, so is the body
        paths[path]["post"]["requestBody"]["required"] = False
    return {
        "openapi": "3.1.0",
        "info": {"title": "Federation broker admin API", "version": "1"},
        "servers": [{"url": f"{public_url}/admin/v1"}],
        "components": {
            "schemas": components,
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
