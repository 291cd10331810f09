"""What the OpenAPI documents of the services' HTTP APIs share: the error shape, its responses, the bearer
scheme, and the small builders for references, bodies and path parameters."""
from marshmallow import Schema, fields


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Stable code, e.g. invalid_input."})
    message = fields.String(required=True, metadata={"description": "For people; may change."})
    details = fields.Dict(required=True, metadata={
        "description": "What went wrong where, usually {field: [messages]}; {} when nothing to add."})


def json_content(schema_ref, description):
    return {"description": description, "content": {"application/json": {"schema": schema_ref}}}


def ref(name):
    """A reference to the component schema ``name``."""
    return {"$ref": "#/components/schemas/{}".format(name)}


def json_body(name, example, required=True):
    """A JSON request body of the component schema ``name``, with an example."""
    return {"required": required, "content": {"application/json": {"schema": ref(name), "example": example}}}


def path_param(name, description, pattern=None, example=None):
    schema = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    parameter = {"in": "path", "name": name, "required": True, "description": description, "schema": schema}
    if example is not None:
        parameter["example"] = example
    return parameter


def error_responses(spec, errors):
    """Declare each of ``errors`` (``{name: (status, description)}``) as a response with the Error schema."""
    for name, (_, description) in errors.items():
        spec.components.response(name, json_content(ref("Error"), description))


def error_refs(errors, *names):
    """``{status: reference}`` of the declared error responses ``names``, for an operation's responses."""
    return {str(errors[name][0]): {"$ref": "#/components/responses/{}".format(name)} for name in names}


def bearer_scheme(spec, admin_means):
    """Declare ``bearerAuth``: the same JWTs (issuer, audience, admin scope) for every service."""
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "An access token (JWT) from the identity provider: issuer JWT_ISSUER, audience "
                       "JWT_AUDIENCE; the customer is its sub and email; the admin scope JWT_ADMIN_SCOPE "
                       "(orders:admin, in scope or scp) {}. In development: ./run.sh token EMAIL "
                       "[--admin].".format(admin_means)})
