"""The review list's filters, read from the query string (also used by the exports)."""

from __future__ import annotations

from datetime import date, timedelta

from django import forms

from chat.operators.dashboard import MAX_DAYS, DashboardRange
from chat.operators.selectors import ReviewFilters
from chat.toolbox import get_toolbox

DEFAULT_DAYS = 30
YES_NO = [("", "Any"), ("yes", "Verified"), ("no", "Not verified")]
PROBLEMS = [("", "Any"), ("any", "Error or fallback"), ("error", "Error"), ("fallback", "Fallback")]
WROTE = [("", "Any"), ("yes", "Wrote something"), ("no", "Never wrote")]
RATINGS = [("", "Any"), ("up", "Thumbs up"), ("down", "Thumbs down"), ("none", "Not rated")]
HANDED_OFF = [("", "Any"), ("yes", "Handed off"), ("no", "Not handed off")]


def _tool_choices() -> list[tuple[str, str]]:
    return [("", "Any"), *((name, name) for name in sorted(get_toolbox().tools))]


class ReviewFilterForm(forms.Form):
    q = forms.CharField(label="Search what was said", required=False, max_length=200)
    since = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    verified = forms.ChoiceField(label="Customer", choices=YES_NO, required=False)
    tool = forms.ChoiceField(label="Tool used", choices=_tool_choices, required=False)
    problem = forms.ChoiceField(label="Problem", choices=PROBLEMS, required=False)
    rating = forms.ChoiceField(label="Rating", choices=RATINGS, required=False)
    wrote = forms.ChoiceField(label="Customer wrote", choices=WROTE, required=False)
    handoff = forms.ChoiceField(label="Person", choices=HANDED_OFF, required=False)

    def review_filters(self) -> ReviewFilters:
        """The valid filters; an invalid field is ignored (and shown with its error) rather than failing."""
        data = self.cleaned_data if self.is_valid() else {
            name: value for name, value in getattr(self, "cleaned_data", {}).items() if name not in self.errors
        }
        verified = {"yes": True, "no": False}.get(data.get("verified") or "")
        return ReviewFilters(
            q=(data.get("q") or "").strip(),
            since=data.get("since"),
            until=data.get("until"),
            verified=verified,
            tool=data.get("tool") or "",
            problem=data.get("problem") or "",
            rating=data.get("rating") or "",
            wrote={"yes": True, "no": False}.get(data.get("wrote") or ""),
            handed_off={"yes": True, "no": False}.get(data.get("handoff") or ""),
        )


class DashboardRangeForm(forms.Form):
    since = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def dashboard_range(self, *, today: date) -> DashboardRange:
        """The days asked for: the last 30 by default, never more than a year, never backwards."""
        data = self.cleaned_data if self.is_valid() else {}
        until = data.get("until") or today
        since = data.get("since") or until - timedelta(days=DEFAULT_DAYS - 1)
        if since > until:
            since, until = until, since
        since = max(since, until - timedelta(days=MAX_DAYS - 1))
        return DashboardRange(since, until)
