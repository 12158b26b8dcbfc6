"""URLs of the example."""

from __future__ import annotations

from django.urls import path
from orders import views as orders
from shop import views

urlpatterns = [
    path("health/", views.health),
    path("signup/", views.signup),
    path("users/<str:username>/", views.user_detail),
    path("orders/", orders.place_order),
    path("orders/<int:order_id>/", orders.order_detail),
]
