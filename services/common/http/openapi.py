"""What the OpenAPI documents of the services' HTTP APIs share: the error shape and the bearer scheme."""
from marshmallow import Schema, fields


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Stable code, e.g. invalid_input."})
    message = fields.String(required=True, metadata={"description": "For people; may change."})
    details = fields.Dict(required=True, metadata={
        "description": "What went wrong where, usually {field: [messages]}; {} when nothing to add."})


def json_content(schema_ref, description):
    return {"description": description, "content": {"application/json": {"schema": schema_ref}}}


def bearer_scheme(spec, admin_means):
    """Declare ``bearerAuth``: the same JWTs (issuer, audience, admin scope) for every service."""
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "An access token (JWT) from the identity provider: issuer JWT_ISSUER, audience "
                       "JWT_AUDIENCE; the customer is its sub and email; the admin scope JWT_ADMIN_SCOPE "
                       "(orders:admin, in scope or scp) {}. In development: ./run.sh token EMAIL "
                       "[--admin].".format(admin_means)})
