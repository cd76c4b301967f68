"""Admin for the ops team: teams, agents and skills, reply templates; cases read-mostly
(agents work cases in the console, supervisors watch them here)."""

from __future__ import annotations

from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from django.utils.html import format_html, format_html_join

from agents.models import (
    Agent, AgentSkill, Case, CaseEntry, Conversation, ConversationMessage, ReplyTemplate, Team, TriageBot, TriageNode,
)
from agents.services.cases import agent_save, team_save
from django.urls import reverse

from journeys.admin.base import HistoryReasonMixin, HistoryRevertGuard, LargeTableMixin, NewestRowsInline


@admin.register(Team)
class TeamAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("name", "slug", "categories", "is_fallback")
    prepopulated_fields = {"slug": ("name",)}

    def save_model(self, request, obj, form, change):
        team_save(team=obj, actor=request.user, reason=self._reason(request, form))


class AgentSkillInline(admin.TabularInline):
    model = AgentSkill
    extra = 1


@admin.register(Agent)
class AgentAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("__str__", "team", "status", "capacity", "languages")
    list_filter = ("team", "status")
    inlines = [AgentSkillInline]
    autocomplete_fields = ("user",)
    search_fields = ("user__username", "user__email")

    def save_model(self, request, obj, form, change):
        agent_save(agent=obj, actor=request.user, reason=self._reason(request, form))


@admin.register(ReplyTemplate)
class ReplyTemplateAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("name", "category", "intent", "language", "active")
    list_filter = ("category", "intent", "language", "active")


class CaseEntryInline(NewestRowsInline, admin.TabularInline):
    """The newest entries; the case's page in the agent console pages through all of them."""

    model = CaseEntry
    ordering = ("-created_at", "-pk")
    list_select_related = ("author", "delivery__channel")
    extra = 0
    fields = ("created_at", "kind", "author", "body", "delivery")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def full_list_url(self, request, obj):
        return reverse("agents:case", args=[obj.pk])


@admin.register(Case)
class CaseAdmin(LargeTableMixin, HistoryRevertGuard, SimpleHistoryAdmin):
    history_revert = False
    list_display = ("__str__", "customer", "category", "priority", "status", "assigned_agent", "sla_due_at", "created_at")
    list_filter = ("status", "priority", "category", "team")
    search_fields = ("subject", "customer__external_id", "customer__email")
    list_select_related = ("customer", "assigned_agent__user")
    inlines = [CaseEntryInline]

    def has_add_permission(self, request):
        return False  # cases are opened by escalations, not by hand

    def has_change_permission(self, request, obj=None):
        return False  # cases change only through the console's services (permissions, SLA, events)


class TriageNodeInline(admin.TabularInline):
    """The decision tree, edited as rows: an option with no parent is in the first menu."""

    model = TriageNode
    extra = 2
    fields = ("parent", "order", "label", "keywords", "text", "handoff", "category")
    fk_name = "bot"

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "parent":
            bot_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            kwargs["queryset"] = TriageNode.objects.filter(bot_id=bot_id) if bot_id else TriageNode.objects.none()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(TriageBot)
class TriageBotAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("name", "channel", "active", "category", "team", "max_misses", "sentiment_floor")
    list_filter = ("active", "channel")
    readonly_fields = ("tree",)
    inlines = [TriageNodeInline]

    @admin.display(description="decision tree")
    def tree(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        rows = []

        def walk(parent, depth):
            for node in obj.nodes.filter(parent=parent):
                keywords = ", ".join(node.keywords or [])
                suffix = " → agent" if node.handoff else ""
                rows.append((depth * 24, node.label, keywords, suffix))
                walk(node, depth + 1)

        walk(None, 0)
        return format_html_join("", '<div style="margin-left:{}px">• {} <small>[{}]</small>{}</div>', rows) \
            or format_html("<em>{}</em>", "no options yet")


class ConversationMessageInline(NewestRowsInline, admin.TabularInline):
    model = ConversationMessage
    ordering = ("-created_at", "-pk")
    list_select_related = ("node", "delivery__channel")
    extra = 0
    fields = ("created_at", "sender", "text", "node", "sentiment", "intent", "delivery")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("__str__", "customer", "bot", "status", "handoff_reason", "case", "last_message_at")
    list_filter = ("status", "bot")
    search_fields = ("customer__external_id", "customer__email")
    readonly_fields = ("customer", "bot", "channel", "status", "current_node", "misses", "best_sentiment", "case",
                       "handoff_reason", "resolved_at", "handed_off_at", "last_message_at")
    inlines = [ConversationMessageInline]

    def has_add_permission(self, request):
        return False  # conversations start when a customer writes
