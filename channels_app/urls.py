from django.urls import path

from channels_app import views

app_name = "channels_app"
urlpatterns = [
    path("u/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("p/<str:token>/", views.preferences, name="preferences"),
    path("o/<str:token>.gif", views.open_pixel, name="open"),
    path("c/<str:token>/", views.click, name="click"),
    path("status/<str:token>/", views.status_callback, name="status"),
    path("inbound/sms/<str:token>/", views.inbound_sms, name="inbound_sms"),
    path("email-events/<int:channel_id>/", views.email_events, name="email_events"),
]
