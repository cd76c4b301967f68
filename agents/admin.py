"""Admin for the ops team: teams, agents and skills, reply templates; cases read-mostly
(agents work cases in the console, supervisors watch them here)."""

from __future__ import annotations

from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from agents.models import Agent, AgentSkill, Case, CaseEntry, ReplyTemplate, Team
from agents.services.cases import agent_save, team_save


@admin.register(Team)
class TeamAdmin(SimpleHistoryAdmin):
    list_display = ("name", "slug", "categories", "is_fallback")
    prepopulated_fields = {"slug": ("name",)}

    def save_model(self, request, obj, form, change):
        team_save(team=obj)


class AgentSkillInline(admin.TabularInline):
    model = AgentSkill
    extra = 1


@admin.register(Agent)
class AgentAdmin(SimpleHistoryAdmin):
    list_display = ("__str__", "team", "status", "capacity", "languages")
    list_filter = ("team", "status")
    inlines = [AgentSkillInline]
    autocomplete_fields = ("user",)
    search_fields = ("user__username", "user__email")

    def save_model(self, request, obj, form, change):
        agent_save(agent=obj)


@admin.register(ReplyTemplate)
class ReplyTemplateAdmin(SimpleHistoryAdmin):
    list_display = ("name", "category", "intent", "language", "active")
    list_filter = ("category", "intent", "language", "active")


class CaseEntryInline(admin.TabularInline):
    model = CaseEntry
    extra = 0
    fields = ("created_at", "kind", "author", "body", "delivery")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Case)
class CaseAdmin(SimpleHistoryAdmin):
    list_display = ("__str__", "customer", "category", "priority", "status", "assigned_agent", "sla_due_at", "created_at")
    list_filter = ("status", "priority", "category", "team")
    search_fields = ("subject", "customer__external_id", "customer__email")
    inlines = [CaseEntryInline]

    def has_add_permission(self, request):
        return False  # cases are opened by escalations, not by hand

    def has_change_permission(self, request, obj=None):
        return False  # cases change only through the console's services (permissions, SLA, events)
