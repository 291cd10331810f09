"""The yardstick: the least a Nameko HTTP request that makes one RPC can cost.

``GatewayService`` answers ``POST /echo`` by calling ``EchoService.echo``
over RPC and returning its answer. Plain nameko, no database, no outbox, no
tracer, no logging: whatever the real system costs beyond this is ours.
"""
import json

from nameko.rpc import RpcProxy, rpc
from nameko.web.handlers import http


class EchoService:
    name = "bench_echo"

    @rpc
    def echo(self, value):
        return value

    @rpc
    def ping(self):
        return "pong"


class GatewayService:
    name = "bench_gateway"

    echo = RpcProxy("bench_echo")

    @http("POST", "/echo")
    def post_echo(self, request):
        answer = self.echo.echo(json.loads(request.get_data(as_text=True)))
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)

    @rpc
    def ping(self):
        return "pong"
