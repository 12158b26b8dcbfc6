"""URLs of the example."""

from __future__ import annotations

from django.urls import path
from shop import views

urlpatterns = [
    path("health/", views.health),
    path("signup/", views.signup),
    path("users/<str:username>/", views.user_detail),
]
