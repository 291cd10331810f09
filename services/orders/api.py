"""The HTTP API of the orders service: the system's front door.

Handlers only translate between HTTP and the service's own methods; every
rule lives in those methods (and the domain), so HTTP and RPC behave alike.
"""
from services.common.http import http, read_json, read_query

from .schemas import ListOrdersSchema



class HttpApi:
    @http("POST", "/orders")
    def http_place_order(self, request):
        order = self.place_order(read_json(request))
        return 202, order

    @http("GET", "/orders")
    def http_list_orders(self, request):
        return {"orders": self.find_orders(read_query(request, ListOrdersSchema()))}

    @http("GET", "/orders/<string:order_id>")
    def http_get_order(self, request, order_id):
        return self.read_order(order_id)

    @http("POST", "/orders/<string:order_id>/cancel")
    def http_cancel_order(self, request, order_id):
        return self.change_status(order_id, "cancelled", "cancelled by request")

    @http("GET", "/products")
    def http_list_products(self, request):
        return {"products": self.inventory.list_products()}

    @http("GET", "/products/<string:sku>")
    def http_get_product(self, request, sku):
        return self.inventory.get_product(sku)

    @http("GET", "/health")
    def http_health(self, request):
        return {"status": "ok", "service": self.name}
