from django.contrib.auth import views as auth_views
from django.urls import path

from agents import chat, views

app_name = "agents"
urlpatterns = [
    path("", views.queue, name="queue"),
    # Agents are not admin staff, so they sign in here rather than on the admin login page.
    path("login/", auth_views.LoginView.as_view(template_name="agents/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="agents:login"), name="logout"),
    path("status/", views.status_set, name="status"),
    path("metrics/", views.metrics, name="metrics"),
    path("cases/<int:pk>/", views.case_detail, name="case"),
    path("cases/<int:pk>/take/", views.case_take, name="take"),
    path("cases/<int:pk>/reply/", views.case_reply, name="reply"),
    path("cases/<int:pk>/note/", views.case_note, name="note"),
    path("cases/<int:pk>/resolve/", views.case_resolve, name="resolve"),
    path("cases/<int:pk>/reopen/", views.case_reopen, name="reopen"),
    path("cases/<int:pk>/close/", views.case_close, name="close"),
    path("cases/<int:pk>/transfer/", views.case_transfer, name="transfer"),
    path("cases/<int:pk>/follow-up/", views.case_followup, name="followup"),
    path("chat/inbound/<str:token>/", chat.chat_inbound, name="chat_inbound"),
]
